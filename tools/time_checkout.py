#!/usr/bin/env python
r"""Times eval forwards of a config's model as built by *another* detrex_lite checkout (e.g. a
git worktree of an older revision, with its operator built), in a subprocess whose
``detrex_lite`` is that checkout's; prints one JSON line.

    python tools/time_checkout.py --tree /path/to/old/checkout --config-file CONFIG \
        --inputs inputs.pt --iters 3 --warmup 1 --num-threads 2 --tune-allocator

The arguments are parsed first; the work is :func:`detrex_lite.benchmark.checkout.time_checkout_main`
(``tools/benchmark.py --baseline-tree`` calls the same code). Every flag: ``--help``.
"""
from typing import Dict, Optional, Sequence

from detrex_lite.benchmark.options import parse_time_checkout_args as parse_args
from detrex_lite.benchmark.options import time_checkout_parser as get_parser
from detrex_lite.cli.entry import run_parsed

__all__ = ["get_parser", "parse_args", "main"]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    return run_parsed(parse_args, "detrex_lite.benchmark.checkout:time_checkout_main", argv)


if __name__ == "__main__":
    main()
