"""``tools/print_config.py``'s command line (stdlib only: ``--help`` answers before torch loads).

:func:`main` parses the arguments, then calls :func:`detrex_lite.config.printing.run`.
"""
import argparse
from typing import Optional, Sequence

from .entry import run_parsed, tool_parser

__all__ = ["get_parser", "main"]

DESCRIPTION = "Print a LazyConfig fully resolved, or the keys in which two configs differ."
EPILOG = """\
examples:
  python tools/print_config.py projects/<family>/configs/<config>.py train.max_iter=600
  python tools/print_config.py projects/<family>/configs/<config>.py --diff projects/<family>/configs/<variant>.py"""


def get_parser() -> argparse.ArgumentParser:
    """print_config's command line: a config, its overrides, and --diff OTHER_CFG [overrides]."""
    parser = tool_parser("print_config.py", DESCRIPTION, EPILOG)
    parser.add_argument("config", help="LazyConfig file (.py or a saved config.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (as train_net takes them)")
    parser.add_argument("--diff", nargs="+", metavar=("OTHER_CFG", "OVERRIDES"),
                        help="print the keys that differ from OTHER_CFG (with its own overrides)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run print_config with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    return run_parsed(get_parser().parse_args, "detrex_lite.config.printing:run", argv)
