#!/usr/bin/env python
r"""Whole-model speed and memory: inference images/s and training iterations/s, fp32 and AMP, on
CPU or GPU, optionally beside Hugging Face transformers, onnxruntime and an older checkout.

    python tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --device cuda --json output/benchmark.json

The arguments are parsed first (``--help`` answers before torch loads); the work is
:func:`detrex_lite.benchmark.runner.run_benchmark`. Every flag: ``--help`` or docs/tools.md.
"""
from typing import Dict, Optional, Sequence

from detrex_lite.benchmark.options import benchmark_parser as get_parser
from detrex_lite.benchmark.options import parse_benchmark_args as parse_args
from detrex_lite.cli.entry import run_parsed

__all__ = ["get_parser", "parse_args", "main"]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    return run_parsed(parse_args, "detrex_lite.benchmark.runner:run_benchmark", argv)


if __name__ == "__main__":
    main()
