"""A detectron2 checkpointer whose writes are atomic.

detectron2 / fvcore write `model_XXXXXXX.pth` in place and then overwrite `last_checkpoint`
in place: a job killed during either write leaves a truncated file that --resume then fails on
(or, worse, a `last_checkpoint` naming a half-written file). Here each file is written under a
temporary name in the same directory, flushed to disk and renamed over the target with
os.replace, which is atomic on POSIX file systems: readers see the old file or the new one,
never a partial one. `last_checkpoint` is updated only after the checkpoint it names is complete.

Two more guards: a checkpoint holding a NaN/inf tensor (a diverged run) is never written, so
`last_checkpoint` always names good weights; and a write that fails (a full disk) raises one
CheckpointWriteError naming the file and the free space, with nothing replaced.
"""
import logging
import os
import re
from typing import Any, Dict, Iterator, List, Tuple

import torch

from detectron2.engine import hooks

from detrex_lite.checkpoint import DetrexCheckpointer
from detrex_lite.checkpoint.run import numbered_checkpoints, read_last_checkpoint
from detrex_lite.errors import CheckpointMismatchError, NothingToResumeError
from detrex_lite.utils.files import fsync_dir, remove_quietly, write_atomically

from .errors import CheckpointWriteError, NonFiniteLossError, non_finite_message

logger = logging.getLogger(__name__)


def atomic_write(path: str, write_fn, *, size_hint: int = 0) -> None:
    """A checkpoint file (or ``last_checkpoint``) written whole:
    :func:`detrex_lite.utils.files.write_atomically`, raising CheckpointWriteError (naming
    ``path`` and the free space; ``size_hint``: bytes the file needs) with the advice to resume."""
    write_atomically(
        path, write_fn, size_hint=size_hint, advice="free some space, then resume with --resume",
        error=CheckpointWriteError,
    )


def _named_tensors(obj, prefix: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict / list, with its dotted path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}.{i}")


def non_finite_tensors(data: Dict[str, Any]) -> Tuple[List[str], int]:
    """Names of the floating-point tensors in `data` (a checkpoint dict: model, optimizer state,
    EMA, ...) that hold a NaN or inf, and the number of floating-point tensors checked.

    One reduction per tensor and one device-to-host copy per device.
    """
    by_device: Dict[torch.device, List[Tuple[str, torch.Tensor]]] = {}
    for name, t in _named_tensors(data):
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for named in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu().tolist()
        bad += [name for (name, _), ok in zip(named, finite) if not ok]
    return bad, sum(len(named) for named in by_device.values())


class AtomicCheckpointer(DetrexCheckpointer):
    """The strict DetrexCheckpointer (mismatches named, class heads skipped when the class count
    differs) with atomic saves and a resume that skips unreadable files."""

    resumed: str = ""  # the file resume_or_load resumed from

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        bad, checked = non_finite_tensors(data)
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise NonFiniteLossError(
                non_finite_message(
                    "weights", data.get("iteration", -1),
                    f"{len(bad)} of {checked} tensors ({shown}); {basename} was not written",
                    self.last_checkpoint_path(),
                )
            )
        self._remove_stale_temporaries()
        self.logger.info(f"Saving checkpoint to {save_file}")
        size = sum(t.numel() * t.element_size() for _, t in _named_tensors(data))
        atomic_write(save_file, lambda f: torch.save(data, f), size_hint=size)
        self.tag_last_checkpoint(basename)

    def save_as_link(self, existing: str, name: str) -> bool:
        """Make ``<name>.pth`` a second name (a hard link) of ``existing``, a file of the folder
        just written with the same contents, and tag it in ``last_checkpoint``: no second copy of
        the same bytes (``model_final.pth`` when the last iteration's periodic checkpoint was
        just written). Atomic like :meth:`save`. Returns False, changing nothing, when the file
        system has no hard links (the caller then saves a copy)."""
        source = os.path.join(self.save_dir, existing)
        target = os.path.join(self.save_dir, f"{name}.pth")
        tmp = os.path.join(self.save_dir, f".{name}.pth.tmp.{os.getpid()}")
        remove_quietly(tmp)
        try:
            os.link(source, tmp)
            os.replace(tmp, target)
        except OSError as e:
            remove_quietly(tmp)
            logger.info(f"Cannot hard-link {source} as {target} ({type(e).__name__}: {e}); writing a copy")
            return False
        remove_quietly(tmp)  # still there when target already was this file (rename did nothing)
        fsync_dir(self.save_dir)
        self.logger.info(f"Saving checkpoint to {target} (a hard link to {existing}: the same file, stored once)")
        self.tag_last_checkpoint(os.path.basename(target))
        return True

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of earlier, killed runs (only the main process saves, so any
        temporary of another process id is left over)."""
        suffix = f".tmp.{os.getpid()}"
        for name in os.listdir(self.save_dir):
            if name.startswith(".") and ".tmp." in name and not name.endswith(suffix):
                remove_quietly(os.path.join(self.save_dir, name))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names ("" when it is missing, damaged or names no file:
        :func:`detrex_lite.checkpoint.run.read_last_checkpoint`, which warns)."""
        return read_last_checkpoint(self.save_dir) if self.save_dir else ""

    def has_checkpoint(self) -> bool:
        return bool(self.get_checkpoint_file())

    def _resume_candidates(self, first: str) -> List[str]:
        """``first`` (the file `last_checkpoint` names, or ""), then this run's other checkpoints
        (``model_final.pth``, ``model_<iteration>.pth``), newest first."""
        ours = re.compile(r"model_(final|\d{7})\.pth")
        others = sorted(
            (p for p in self.get_all_checkpoint_files() if p != first and ours.fullmatch(os.path.basename(p))),
            key=lambda p: os.path.getmtime(p),
            reverse=True,
        )
        return [p for p in [first] + others if p]

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume``: the newest loadable checkpoint of the folder (the one `last_checkpoint`
        names first; without that file, e.g. lost in a copy, the newest complete checkpoint, said
        in a warning). Without any checkpoint in the folder, ``path`` (a fresh start). Sets
        ``self.resumed`` to the file it resumed from ("" when it did not resume).

        Raises:
            NothingToResumeError: checkpoints are there but none loads (nothing is overwritten:
                training does not start from scratch over them), or the newest does not fit the
                config (naming it and what differs).
        """
        self.resumed = ""
        if not (resume and self.save_dir and os.path.isdir(self.save_dir)):
            return self.load(path, checkpointables=[])
        named = self.get_checkpoint_file()  # read (and warned about) once
        candidates = self._resume_candidates(named)
        if not candidates:
            return self.load(path, checkpointables=[])
        if not named:
            logger.warning(
                f"{self.save_dir} has no last_checkpoint file: resuming from the newest complete checkpoint, {candidates[0]}"
            )
        errors = []
        for candidate in candidates:
            try:
                checkpoint = self.load(candidate)
            except CheckpointMismatchError as e:
                # The config is not the run's (an architecture option or the class count changed):
                # an older checkpoint of the run would not fit either.
                raise NothingToResumeError(
                    f"--resume: {e}; nothing was loaded or overwritten: resume with the run's settings "
                    f"({os.path.join(self.save_dir, 'config.yaml')}), or train into another train.output_dir"
                ) from None
            except Exception as e:  # a file written by another tool, or damaged on disk
                self._parsed_url_during_load = None  # left set by d2's failed load (no public reset)
                errors.append(f"{os.path.basename(candidate)}: {type(e).__name__}: {e}")
                logger.warning(f"Cannot resume from {candidate} ({type(e).__name__}: {e}); trying an older one")
                continue
            self.resumed = candidate
            return checkpoint
        raise NothingToResumeError(
            "--resume: no checkpoint in {} can be loaded, and training from scratch would overwrite them "
            "({}); move them away to start again, or name a good one with train.init_checkpoint".format(
                self.save_dir, "; ".join(errors)
            )
        )

    def checkpoint_before(self, iteration: int, *, retag: bool = False) -> str:
        """The newest ``model_<i>.pth`` of the folder whose weights (those after iteration ``i``)
        were used by an iteration before ``iteration`` (``i + 1 < iteration``), or "" when there is
        none; with ``retag``, ``last_checkpoint`` then names it, so that ``--resume`` continues
        from there (the newer files stay on disk)."""
        before = [name for i, name in numbered_checkpoints(self.save_dir) if i + 1 < iteration]
        if not before:
            return ""
        if retag:
            self.tag_last_checkpoint(before[-1])
        return os.path.join(self.save_dir, before[-1])

    def last_checkpoint_path(self) -> str:
        """The file `last_checkpoint` names, or "" when nothing was saved yet."""
        return self.get_checkpoint_file()


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's PeriodicCheckpointer hook, with `max_to_keep` counting the periodic
    checkpoints on disk (`<prefix>_XXXXXXX.pth`, earlier runs of the same folder included: a
    resumed run keeps `max_to_keep` in all), not only the ones this process wrote.
    `<prefix>_final.pth` and the file `last_checkpoint` names are never removed.

    When the last iteration is also a periodic one, `<prefix>_final.pth` is a hard link to the
    periodic file just written (the same weights stored once; a copy where the file system has no
    hard links). A later, longer run replaces `<prefix>_final.pth` atomically, which leaves the
    periodic file as it was.
    """

    def step(self, iteration: int, **kwargs: Any) -> None:
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        periodic = ""
        if (iteration + 1) % self.period == 0:
            periodic = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(periodic, **state)
            self.remove_old_checkpoints()
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            final = f"{self.file_prefix}_final"
            linked = bool(periodic) and hasattr(self.checkpointer, "save_as_link") and self.checkpointer.save_as_link(
                f"{periodic}.pth", final
            )
            if not linked:
                self.checkpointer.save(final, **state)

    def remove_old_checkpoints(self) -> List[str]:
        """Delete the oldest periodic checkpoints beyond max_to_keep; returns the removed paths."""
        if self.max_to_keep is None:
            return []
        directory = self.checkpointer.save_dir
        pattern = re.compile(re.escape(self.file_prefix) + r"_\d{7}\.pth")
        paths = [os.path.join(directory, n) for n in os.listdir(directory) if pattern.fullmatch(n)]
        # Newest first by the iteration in the name, not by modification time: a folder copied
        # without its times (cp -r, rsync without -t) must not lose its latest checkpoints.
        paths.sort(key=lambda p: int(os.path.basename(p)[len(self.file_prefix) + 1:-4]), reverse=True)
        keep = self.checkpointer.last_checkpoint_path()
        removed = []
        for path in paths[self.max_to_keep:]:
            if os.path.abspath(path) != os.path.abspath(keep):
                remove_quietly(path)
                removed.append(path)
        return removed
