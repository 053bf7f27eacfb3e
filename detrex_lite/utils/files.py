"""Writing files whole: checks made before long work that ends in a file, and a temporary file
renamed over the target only once it is complete."""
import contextlib
import os
import shutil
import tempfile
from typing import BinaryIO, Callable, Iterator, Type

from detrex_lite.errors import OutputDirError, OutputWriteError

__all__ = ["check_writable", "fsync_dir", "replaced_when_done", "remove_quietly", "write_atomically"]


def check_writable(path: str, flag: str = "--output") -> None:
    """Raise OutputDirError (one line naming ``flag`` and ``path``) unless a file can be written
    at ``path``: its folder is created if missing and a probe file is created and removed there,
    so an unwritable output fails before an export or a benchmark runs, not after."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputDirError(f"{flag} {path} is a folder: give a file path")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OutputDirError(f"{flag} {path}: cannot write in {directory} ({e.strerror or e})") from None


@contextlib.contextmanager
def replaced_when_done(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` to write (for writers that take a file name, e.g.
    ``LazyConfig.save``, ``torch.onnx.export``); renames it over ``path`` when the block ends
    without an error, and removes it otherwise: a process killed meanwhile leaves ``path`` whole."""
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.tmp.{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomically(
    path: str,
    write_fn: Callable[[BinaryIO], None],
    *,
    size_hint: int = 0,
    advice: str = "free some space and run again",
    error: Type[OutputWriteError] = OutputWriteError,
) -> None:
    """Call ``write_fn(file_object)`` on a temporary file beside ``path``, flush it to disk and
    rename it to ``path`` (atomic on POSIX file systems: readers see the old file or the new one).

    A failed write (OSError, or torch.save's RuntimeError when the disk fills up) removes the
    temporary file, leaves ``path`` as it was and raises ``error`` (one line) naming ``path``, the
    cause and the free space of its file system (``size_hint``: bytes the file needs, shown when
    given), ending with ``advice``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        remove_quietly(tmp)
        try:
            free = _megabytes(shutil.disk_usage(directory).free)
        except OSError:
            free = "unknown"
        need = f", the file needs about {_megabytes(size_hint)}" if size_hint else ""
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(
            f"cannot write {path} ({type(e).__name__}: {reason}); free space in {directory}: {free}{need}; "
            f"nothing was replaced ({advice})"
        ) from e
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(directory)


def remove_quietly(path: str) -> None:
    """Remove the file ``path`` if it can be removed."""
    try:
        os.remove(path)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
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


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MB"
