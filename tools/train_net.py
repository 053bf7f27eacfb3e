#!/usr/bin/env python
"""Train or evaluate a detrex_lite LazyConfig model (detectron2's trainer and COCO evaluation).

    python tools/train_net.py --config-file CONFIG [flags] [key=value ...]

The command line is detrex_lite.cli.train_net (``--help`` lists every flag, the overrides and
the exit codes); the work is detrex_lite.engine.train_net. See docs/training.md and
docs/reliability.md.
"""
import sys

from detrex_lite.cli.train_net import cli, get_parser, parse_args  # noqa: F401  (tests/test_tools_docs.py)

if __name__ == "__main__":
    sys.exit(cli())
