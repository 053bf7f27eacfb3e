"""Writing files whole: checks made before long work that ends in a file, and a temporary file
renamed over the target only once it is complete."""
import contextlib
import os
import tempfile
from typing import Iterator

from detrex_lite.errors import OutputDirError

__all__ = ["check_writable", "replaced_when_done"]


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
