"""``tools/analyze_model.py``: parameters, fvcore FLOPs at an input size (with the deformable
attention counted, :mod:`detrex_lite.export.flops`) and a per-module breakdown of a config's
model, as a report dict and a printed table."""
from typing import Dict, Sequence

import torch
from detectron2.config import instantiate
from tabulate import tabulate

from detrex_lite.predictor import load_config
from detrex_lite.utils import json_io
from detrex_lite.utils.logger import setup_logger

from .flops import model_flop_analysis, module_breakdown, synthetic_image_inputs

__all__ = ["analyze", "format_report", "analyze_model_main"]


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
    """The printed form of :func:`analyze`'s report: totals, the per-operator split and the per-module table."""
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


def analyze_model_main(args) -> Dict:
    """Analyses with the parsed arguments (:func:`detrex_lite.export.options.parse_analyze_model_args`):
    prints the module tree (``--tasks structure``) and the tables, writes ``--json``; returns the report."""
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
