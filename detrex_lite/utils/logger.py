"""Loggers for the tools and training: plain text in files, colour only on a terminal.

A record logged with ``extra=LOG_FILE_ONLY`` (the model printout, hundreds of lines) goes to the
log file and not to the terminal.
"""
import logging
import os
import sys
from types import MappingProxyType
from typing import Iterable, Optional

from detectron2.utils.logger import setup_logger as _d2_setup_logger

__all__ = ["LOG_FILE_ONLY", "setup_logger"]

# ``logger.info(text, extra=LOG_FILE_ONLY)``: written to log.txt only (read-only: the attribute
# the record then carries).
_FILE_ONLY_ATTR = "detrex_log_file_only"
LOG_FILE_ONLY = MappingProxyType({_FILE_ONLY_ATTR: True})


class _NotForTheTerminal(logging.Filter):
    """Drops the records marked with ``extra=LOG_FILE_ONLY``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, _FILE_ONLY_ATTR, False)


def _writes_to_a_file(handler: logging.Handler) -> bool:
    """A handler writing to a file on disk (detectron2's log.txt handler is a StreamHandler on an
    opened file), as opposed to stdout / stderr (whose ``name`` is "<stdout>", or none)."""
    if isinstance(handler, logging.FileHandler):
        return True
    name = getattr(getattr(handler, "stream", None), "name", None)
    return isinstance(name, str) and os.path.isfile(name)


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    names: Iterable[str] = ("detrex_lite",),
    color: Optional[bool] = None,
) -> logging.Logger:
    """detectron2's ``setup_logger`` for each of ``names``; returns the last one.

    Args:
        output: a folder (logs go to ``output/log.txt``, ``log.txt.rank<r>`` on other ranks), a
            ``.txt``/``.log`` file name, or None for no file.
        distributed_rank: the process rank; only rank 0 logs to stdout.
        names: the logger names to configure (e.g. "detectron2", "fvcore", "detrex_lite").
        color: colour the stdout lines; default: only when stdout is a terminal. The file is
            always plain text (detectron2 formats it without colour).

    Records logged with ``extra=LOG_FILE_ONLY`` reach the file only.
    """
    if color is None:
        color = sys.stdout.isatty()
    logger = None
    for name in names:
        # detectron2 caches setup_logger on its arguments, so a repeated call adds no handler.
        logger = _d2_setup_logger(output, distributed_rank, color=color, name=name)
        for handler in logger.handlers:
            if _writes_to_a_file(handler) or not isinstance(handler, logging.StreamHandler):
                continue
            if not any(isinstance(f, _NotForTheTerminal) for f in handler.filters):
                handler.addFilter(_NotForTheTerminal())
            # detectron2's cached handler keeps the stdout of the first call: when that stream has
            # been closed since (a test's capture, a notebook cell's redirect), write to today's.
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                handler.stream = sys.stdout  # (setStream would flush the closed stream)
    return logger
