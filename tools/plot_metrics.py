#!/usr/bin/env python
"""Plot training curves (loss and COCO AP against iteration) of one or more training runs.

    python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo \
        --labels "Deformable DETR" DETR --out benchmarks/demo_comparison

Each run folder holds the ``metrics.json`` that detectron2's JSONWriter writes (one JSON object
per line). Writes one PNG per metric into ``--out``: ``loss.png`` (``total_loss``, or the sum of
the ``loss_*`` keys when a line has no ``total_loss``) and ``AP.png``, ``AP50.png``, ``APs.png``,
``APm.png``, ``APl.png`` (the evaluator's ``bbox/<metric>``), one line per run. A partial last
line (a run still writing) is skipped; a run without evaluations yet only gets a loss curve.
With ``--summary`` it also writes ``summary.json`` and ``summary.md``: each run's AP metrics at
its last evaluation and its AP at every evaluation.
"""
import argparse
import json
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger("detrex_lite.plot_metrics")

LOSS = "loss"
AP_METRICS = ("AP", "AP50", "APs", "APm", "APl")
METRICS = (LOSS,) + AP_METRICS
# Evaluators report COCO AP under "<task>/<metric>"; detection runs use "bbox".
AP_PREFIX = "bbox/"

Series = Tuple[List[int], List[float]]


def read_metrics(path: str) -> List[dict]:
    """The JSON objects of a metrics.json, one per line, in file order.

    A line that is not a complete JSON object (typically the last line of a run that is still
    writing) is skipped with a warning. Raises FileNotFoundError naming the file if it is missing.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"plot_metrics: no metrics file at {path} (is it a training output folder?)")
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning(f"{path}:{line_no}: skipping a line that is not complete JSON")
                continue
            if isinstance(record, dict) and "iteration" in record:
                records.append(record)
    return records


def _loss_value(record: dict) -> Optional[float]:
    if "total_loss" in record:
        return float(record["total_loss"])
    parts = [float(v) for k, v in record.items() if k.startswith("loss_") and isinstance(v, (int, float))]
    return sum(parts) if parts else None


def extract_series(records: Sequence[dict]) -> Dict[str, Series]:
    """{metric: (iterations, values)} for every metric in METRICS that the records contain.

    The loss is ``total_loss`` or the sum of the ``loss_*`` keys; the AP metrics are the
    ``bbox/<metric>`` keys. Non-finite values (e.g. AP = NaN with no detections) are dropped.
    When several lines give the same metric at the same iteration, the last one wins.
    """
    by_metric: Dict[str, Dict[int, float]] = {m: {} for m in METRICS}
    for record in records:
        iteration = int(record["iteration"])
        loss = _loss_value(record)
        if loss is not None:
            by_metric[LOSS][iteration] = loss
        for metric in AP_METRICS:
            value = record.get(AP_PREFIX + metric)
            if isinstance(value, (int, float)):
                by_metric[metric][iteration] = float(value)
    series = {}
    for metric, points in by_metric.items():
        items = sorted((it, v) for it, v in points.items() if math.isfinite(v))
        if items:
            series[metric] = ([it for it, _ in items], [v for _, v in items])
    return series


def load_run(folder: str) -> Dict[str, Series]:
    """extract_series of ``<folder>/metrics.json``."""
    return extract_series(read_metrics(os.path.join(folder, "metrics.json")))


def plot_runs(runs: Dict[str, Dict[str, Series]], out_dir: str) -> List[str]:
    """One PNG per metric that at least one run has; returns the written paths.

    Args:
        runs: {label: extract_series(...)}, in legend order.
        out_dir: created if missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for metric in METRICS:
        labelled = [(label, series[metric]) for label, series in runs.items() if metric in series]
        if not labelled:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
        for label, (iterations, values) in labelled:
            ax.plot(iterations, values, marker="o" if metric != LOSS else None, markersize=3, label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel("total loss" if metric == LOSS else f"COCO {metric}")
        if metric == LOSS:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{metric}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def summarize(runs: Dict[str, Dict[str, Series]]) -> Dict[str, dict]:
    """{label: {"iteration": last logged iteration, "final": {metric: value at the last
    evaluation} plus its "eval_iteration", "AP_curve": [[iteration, AP], ...]}}."""
    summary = {}
    for label, series in runs.items():
        iterations = [its[-1] for its, _ in series.values()]
        entry = {"iteration": max(iterations) if iterations else None, "final": {}, "AP_curve": []}
        if "AP" in series:
            entry["final"]["eval_iteration"] = series["AP"][0][-1]
            entry["AP_curve"] = [[it, v] for it, v in zip(*series["AP"])]
        for metric in AP_METRICS:
            if metric in series:
                entry["final"][metric] = series[metric][1][-1]
        summary[label] = entry
    return summary


def write_summary(summary: Dict[str, dict], out_dir: str) -> List[str]:
    """summary.json and summary.md (a Markdown table of the final AP metrics) in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "summary.json")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    lines = ["| run | iteration | " + " | ".join(AP_METRICS) + " |", "|---|---:|" + "---:|" * len(AP_METRICS)]
    for label, entry in summary.items():
        final = entry["final"]
        cells = [f"{final[m]:.1f}" if m in final else "-" for m in AP_METRICS]
        lines.append(f"| {label} | {final.get('eval_iteration', '-')} | " + " | ".join(cells) + " |")
    md_path = os.path.join(out_dir, "summary.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [json_path, md_path]


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="training output folders, each with a metrics.json")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels (default: the folder names)")
    parser.add_argument("--out", default=".", help="folder for the PNGs (default: the current folder)")
    parser.add_argument("--summary", action="store_true", help="also write summary.json and summary.md")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        print(f"plot_metrics: error: {len(labels)} labels for {len(args.runs)} runs", file=sys.stderr)
        return 2
    if len(set(labels)) != len(labels):
        print(f"plot_metrics: error: the labels must differ, got {labels} (use --labels)", file=sys.stderr)
        return 2
    runs = {}
    for label, folder in zip(labels, args.runs):
        try:
            runs[label] = load_run(folder)
        except FileNotFoundError as e:
            print(f"plot_metrics: error: {e}", file=sys.stderr)
            return 2
        if not runs[label]:
            logger.warning(f"{folder}: metrics.json has no loss or AP values yet")
    written = plot_runs(runs, args.out)
    if args.summary:
        written += write_summary(summarize(runs), args.out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
