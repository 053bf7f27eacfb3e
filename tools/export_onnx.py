#!/usr/bin/env python
r"""Exports a trained DETR-family detector to ONNX and checks it against PyTorch with onnxruntime.

    python tools/export_onnx.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --checkpoint output/model_final.pth --output output/model.onnx --check-images a.jpg b.jpg

    python tools/export_onnx.py --run output/run --output output/run/model.onnx   # a training folder

The arguments are parsed first (``--help`` answers before torch loads); the work is
:func:`detrex_lite.export.onnx_tool.export_onnx_cli`. Exit status 1 when the parity check fails or
the checkpoint does not fit. Every flag and the graph's contract: ``--help``, docs/tools.md.
"""
import sys
from typing import Dict, Optional, Sequence

from detrex_lite.cli.entry import run_parsed
from detrex_lite.export.options import export_onnx_parser as get_parser
from detrex_lite.export.options import parse_export_onnx_args as parse_args

__all__ = ["get_parser", "parse_args", "main", "cli"]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """The export and its parity report (exceptions propagate)."""
    return run_parsed(parse_args, "detrex_lite.export.onnx_tool:export_and_check", argv)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The exit status of the tool (0, or 1 with one line on stderr)."""
    return run_parsed(parse_args, "detrex_lite.export.onnx_tool:export_onnx_cli", argv)


if __name__ == "__main__":
    sys.exit(cli())
