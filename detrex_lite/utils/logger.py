"""Loggers for the tools and training: plain text in files, colour only on a terminal."""
import logging
import sys
from typing import Iterable, Optional

from detectron2.utils.logger import setup_logger as _d2_setup_logger


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
    """
    if color is None:
        color = sys.stdout.isatty()
    logger = None
    for name in names:
        # detectron2 caches setup_logger on its arguments, so a repeated call adds no handler.
        logger = _d2_setup_logger(output, distributed_rank, color=color, name=name)
    return logger
