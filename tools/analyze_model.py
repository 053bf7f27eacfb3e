#!/usr/bin/env python
r"""Parameter count, FLOPs at a given input size and a per-module breakdown of any config's model.

    python tools/analyze_model.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --tasks parameter flop --image-size 800 1333 --max-depth 2

The arguments are parsed first (``--help`` answers before torch loads); the work is
:func:`detrex_lite.export.model_analysis.analyze_model_main`. Every flag: ``--help``.
"""
from typing import Dict, Optional, Sequence

from detrex_lite.cli.entry import run_parsed
from detrex_lite.export.options import analyze_model_parser as get_parser
from detrex_lite.export.options import parse_analyze_model_args as parse_args

__all__ = ["get_parser", "parse_args", "main"]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    return run_parsed(parse_args, "detrex_lite.export.model_analysis:analyze_model_main", argv)


if __name__ == "__main__":
    main()
