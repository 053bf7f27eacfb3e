"""A detectron2 checkpointer whose writes are atomic.

detectron2 / fvcore write `model_XXXXXXX.pth` in place and then overwrite `last_checkpoint`
in place: a job killed during either write leaves a truncated file that --resume then fails on
(or, worse, a `last_checkpoint` naming a half-written file). Here each file is written under a
temporary name in the same directory, flushed to disk and renamed over the target with
os.replace, which is atomic on POSIX file systems: readers see the old file or the new one,
never a partial one. `last_checkpoint` is updated only after the checkpoint it names is complete.
"""
import logging
import os
from typing import Any, Dict, List

import torch

from detrex_lite.checkpoint import DetrexCheckpointer

logger = logging.getLogger(__name__)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write_fn) -> None:
    """Call write_fn(file_object) on a temporary file beside `path`, then rename it to `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


class AtomicCheckpointer(DetrexCheckpointer):
    """The strict DetrexCheckpointer (mismatches named, class heads skipped when the class count
    differs) with atomic saves and a resume that skips unreadable files."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self._remove_stale_temporaries()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of earlier, killed runs (only the main process saves, so any
        temporary of another process id is left over)."""
        suffix = f".tmp.{os.getpid()}"
        for name in os.listdir(self.save_dir):
            if name.startswith(".") and ".tmp." in name and not name.endswith(suffix):
                try:
                    os.remove(os.path.join(self.save_dir, name))
                except OSError:
                    pass

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _resume_candidates(self) -> List[str]:
        """`last_checkpoint`'s file first, then the other checkpoints, newest first."""
        first = self.get_checkpoint_file()
        others = sorted(
            (p for p in self.get_all_checkpoint_files() if p != first),
            key=lambda p: os.path.getmtime(p),
            reverse=True,
        )
        return [p for p in [first] + others if p]

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        errors = []
        for candidate in self._resume_candidates():
            try:
                return self.load(candidate)
            except Exception as e:  # a file written by another tool, or damaged on disk
                self._parsed_url_during_load = None  # left set by d2's failed load (no public reset)
                errors.append(f"{candidate}: {type(e).__name__}: {e}")
                logger.warning(f"Cannot resume from {candidate} ({type(e).__name__}: {e}); trying an older one")
        raise RuntimeError("no loadable checkpoint in {}: {}".format(self.save_dir, "; ".join(errors)))

    def last_checkpoint_path(self) -> str:
        """The file `last_checkpoint` names, or "" when nothing was saved yet."""
        return self.get_checkpoint_file() if self.has_checkpoint() else ""
