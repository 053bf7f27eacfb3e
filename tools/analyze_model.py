#!/usr/bin/env python
r"""Parameter count, FLOPs at a given input size and a per-module breakdown of any config's model.

    python tools/analyze_model.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --tasks parameter flop --image-size 800 1333 --max-depth 2

FLOPs are counted by fvcore on one traced forward pass in eval mode (one fused multiply-add = one
FLOP, as in the DETR and Deformable DETR papers), including the multi-scale deformable
attention op (see ``detrex_lite.export.flops``). The input is one random image of
``--image-size`` given to the model as is (no resize). Weights are not needed and not loaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402
import detrex_lite  # noqa: E402,F401  (first: imports detectron2 without its torch.jit warnings)

from detectron2.config import instantiate  # noqa: E402
from tabulate import tabulate  # noqa: E402

from detrex_lite.export.flops import model_flop_analysis, module_breakdown, synthetic_image_inputs  # noqa: E402
from detrex_lite.predictor import load_config  # noqa: E402
from detrex_lite.utils import json_io  # noqa: E402
from detrex_lite.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("detrex_lite.analyze_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--tasks", nargs="+", default=["parameter", "flop"], choices=["parameter", "flop", "structure"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--max-depth", type=int, default=2, help="depth of the per-module breakdown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def analyze(model: torch.nn.Module, tasks: Sequence[str], image_size: Sequence[int], max_depth: int) -> Dict:
    """Numbers for ``tasks`` ("parameter", "flop"); the model is put in eval mode."""
    model.eval()
    report: Dict = {}
    analysis = None
    if "flop" in tasks:
        inputs = synthetic_image_inputs(image_size, next(model.parameters()).device)
        with torch.no_grad():
            analysis = model_flop_analysis(model, inputs)
            report["flops"] = int(analysis.total())
        report["image_size"] = list(image_size)
        report["flops_by_operator"] = {k: int(v) for k, v in sorted(analysis.by_operator().items(), key=lambda kv: -kv[1])}
        skipped = analysis.unsupported_ops()
        report["uncounted_operators"] = dict(skipped)
    if "parameter" in tasks or "flop" in tasks:
        report["params"] = sum(p.numel() for p in model.parameters())
        report["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        report["by_module"] = module_breakdown(model, analysis, max_depth)
    return report


def format_report(report: Dict) -> str:
    lines = []
    if "params" in report:
        lines.append(f"parameters: {report['params']:,} ({_human(report['params'])}), trainable {report['trainable_params']:,}")
    if "flops" in report:
        h, w = report["image_size"]
        lines.append(f"FLOPs at {h}x{w}: {report['flops']:,} ({_human(report['flops'])})")
        ops = ", ".join(f"{k.split('::')[-1]} {_human(v)}" for k, v in report["flops_by_operator"].items())
        lines.append(f"by operator: {ops}")
        if report["uncounted_operators"]:
            lines.append("not counted (no FLOP handle): " + ", ".join(sorted(report["uncounted_operators"])))
    if "by_module" in report:
        headers = ["module", "#params"] + (["FLOPs"] if "flops" in report else [])
        rows = []
        for name, row in report["by_module"].items():
            cells = [name or "(model)", _human(row["params"])]
            if "flops" in row:
                cells.append(_human(row["flops"]))
            rows.append(cells)
        lines.append(tabulate(rows, headers=headers, tablefmt="pipe"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    setup_logger()
    cfg = load_config(args.config_file, args.opts)
    model = instantiate(cfg.model).to(torch.device(args.device))
    if "structure" in args.tasks:
        print(model)
    report = analyze(model, args.tasks, args.image_size, args.max_depth)
    print(format_report(report))
    if args.json:
        json_io.dump(report, args.json)
    return report


if __name__ == "__main__":
    main()
