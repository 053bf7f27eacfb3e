"""Checks made before long work that ends in writing a file."""
import os
import tempfile

from detrex_lite.errors import OutputDirError

__all__ = ["check_writable"]


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
