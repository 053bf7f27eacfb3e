"""Training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one
or more training runs, overlaid with their names.

    python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo \
        --labels "Deformable DETR" DETR --out benchmarks/demo_comparison [--log] [--summary]

Each run folder holds the ``metrics.json`` that detectron2's JSONWriter writes (one JSON object
per line). Writes one PNG per metric into ``--out`` (default: ``plots/`` in the first run folder),
one line per run:

* ``loss.png``: ``total_loss`` (or the sum of the ``loss_*`` keys when a line has none);
* ``loss_terms.png``: every loss term (as weighted in the total), one column per term
  (``loss_class``, ``loss_bbox``, ``loss_giou``, ...) and one row per stage: the final decoder
  layer, the auxiliary decoder layers (``loss_*_0``, ``loss_*_1``, ..., lighter to darker) and
  the two-stage encoder proposals (``loss_*_enc``);
* ``lr.png``, ``grad_norm.png`` (before clipping), ``time.png`` (seconds per iteration, and the
  data loading part ``data_time`` dashed);
* ``AP.png``, ``AP50.png``, ``APs.png``, ``APm.png``, ``APl.png`` (the evaluator's
  ``bbox/<metric>``).

The y axes are linear; ``--log`` makes the loss and gradient-norm axes logarithmic. A partial
last line (a run still writing) is skipped. A resumed run appends its lines after those of the
interrupted one: where the training lines' iteration goes back, the earlier lines from that
iteration on are superseded; each iteration (and each evaluation) keeps its last row. With
``--summary`` it also writes ``summary.json`` and ``summary.md``: each run's AP metrics at its last evaluation
and its AP at every evaluation.
"""
import argparse
import json
import logging
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "AP_METRICS", "METRICS", "SCALARS", "drop_superseded", "extract_series", "load_run", "loss_terms",
    "plot_loss_terms", "plot_runs", "read_metrics", "run", "split_loss_term", "summarize", "write_summary",
]

logger = logging.getLogger("detrex_lite.plot_metrics")

LOSS = "loss"
AP_METRICS = ("AP", "AP50", "APs", "APm", "APl")
# Scalars the trainer logs every log_period, with their axis labels.
SCALARS = {
    "lr": "learning rate",
    "grad_norm": "gradient norm (before clipping)",
    "time": "seconds per iteration",
    "data_time": "data loading, seconds per iteration",
}
METRICS = (LOSS,) + AP_METRICS
# loss_<term>[_<decoder layer>|_enc]: the criterion's stage suffixes.
LOSS_TERM = re.compile(r"^(loss_\w+?)(?:_(\d+|enc))?$")
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
    records: List[dict] = []
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
    return drop_superseded(records)


def _is_training_row(record: dict) -> bool:
    return any(k in SCALARS or k == "total_loss" or k.startswith("loss_") for k in record)


def drop_superseded(records: Sequence[dict]) -> List[dict]:
    """The records of the latest attempt at each iteration.

    A resumed run appends its lines after those of the interrupted attempt, starting again from
    its checkpoint's iteration. Where a training line (one with losses, lr or timings) goes back
    to iteration i, every earlier line with iteration >= i belongs to the interrupted attempt and
    is dropped (also those beyond where the resumed run has reached so far). Evaluation lines
    never start a new attempt, so they may come in any order; extract_series keeps the last
    value per iteration.
    """
    kept: List[dict] = []
    last_training = -1
    for record in records:
        iteration = int(record["iteration"])
        if _is_training_row(record):
            if iteration < last_training:
                kept = [r for r in kept if int(r["iteration"]) < iteration]
            last_training = iteration
        kept.append(record)
    return kept


def split_loss_term(key: str) -> Optional[Tuple[str, str]]:
    """("loss_class", "final" | "aux_<k>" | "enc") for a criterion loss key, else None."""
    match = LOSS_TERM.match(key)
    if match is None:
        return None
    base, stage = match.groups()
    if stage is None:
        return base, "final"
    return base, "enc" if stage == "enc" else f"aux_{stage}"


def _loss_value(record: dict) -> Optional[float]:
    if "total_loss" in record:
        return float(record["total_loss"])
    parts = [float(v) for k, v in record.items() if k.startswith("loss_") and isinstance(v, (int, float))]
    return sum(parts) if parts else None


def extract_series(records: Sequence[dict]) -> Dict[str, Series]:
    """{metric: (iterations, values)} for every metric the records contain: "loss" (the total),
    the AP metrics (from the ``bbox/<metric>`` keys), the SCALARS (lr, grad_norm, time,
    data_time) and each ``loss_*`` term under its own key.

    Non-finite values (e.g. AP = NaN with no detections) are dropped. When several lines give
    the same metric at the same iteration, the last one wins.
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
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if key in SCALARS or split_loss_term(key) is not None:
                    by_metric.setdefault(key, {})[iteration] = float(value)
    series = {}
    for metric, points in by_metric.items():
        items = sorted((it, v) for it, v in points.items() if math.isfinite(v))
        if items:
            series[metric] = ([it for it, _ in items], [v for _, v in items])
    return series


def load_run(folder: str) -> Dict[str, Series]:
    """extract_series of ``<folder>/metrics.json``."""
    return extract_series(read_metrics(os.path.join(folder, "metrics.json")))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(runs) -> Dict[str, str]:
    return {label: f"C{i % 10}" for i, label in enumerate(runs)}


def _line_plot(runs, metric: str, ylabel: str, path: str, log: bool, dashed: Optional[str] = None) -> Optional[str]:
    """One line per run that has ``metric`` (and ``dashed``, drawn dashed in the same colour)."""
    plt = _pyplot()
    colors = _colors(runs)
    labelled = [(label, series) for label, series in runs.items() if metric in series]
    if not labelled:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.9), dpi=100)
    for label, series in labelled:
        iterations, values = series[metric]
        marker = "o" if metric in AP_METRICS else None
        ax.plot(iterations, values, marker=marker, markersize=3, color=colors[label], label=label)
        if dashed and dashed in series:
            ax.plot(*series[dashed], color=colors[label], linestyle="--", linewidth=1,
                    label=f"{label}: {dashed}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _stage_order(stage: str) -> Tuple[int, int]:
    if stage == "final":
        return (0, 0)
    if stage == "enc":
        return (2, 0)
    return (1, int(stage.split("_")[1]))


def loss_terms(series: Dict[str, Series]) -> Dict[str, Dict[str, str]]:
    """{base term: {stage: metric key}} of one run's loss terms (see split_loss_term)."""
    terms: Dict[str, Dict[str, str]] = {}
    for key in series:
        parsed = split_loss_term(key)
        if parsed is not None:
            terms.setdefault(parsed[0], {})[parsed[1]] = key
    return terms


def plot_loss_terms(runs: Dict[str, Dict[str, Series]], path: str, log: bool = False) -> Optional[str]:
    """loss_terms.png: columns = loss terms, rows = final layer / auxiliary layers / encoder."""
    plt = _pyplot()
    colors = _colors(runs)
    per_run = {label: loss_terms(series) for label, series in runs.items()}
    bases = sorted({b for terms in per_run.values() for b in terms},
                   key=lambda b: (("loss_class", "loss_bbox", "loss_giou") + (b,)).index(b))
    if not bases:
        return None
    groups = [("final", "final decoder layer"), ("aux", "auxiliary decoder layers"), ("enc", "encoder proposals")]
    present = [(g, title) for g, title in groups if any(
        (s == g or s.startswith(g + "_")) for terms in per_run.values() for stages in terms.values() for s in stages)]
    fig, axes = plt.subplots(len(present), len(bases), figsize=(4.2 * len(bases), 2.9 * len(present)), dpi=100,
                             squeeze=False)
    for row, (group, title) in enumerate(present):
        for col, base in enumerate(bases):
            ax = axes[row, col]
            for label, terms in per_run.items():
                stages = sorted((s for s in terms.get(base, {}) if s == group or s.startswith(group + "_")),
                                key=_stage_order)
                for i, stage in enumerate(stages):
                    shade = 0.35 + 0.65 * (i + 1) / len(stages) if group == "aux" else 1.0
                    name = label if group != "aux" else f"{label}: layer {stage.split('_')[1]}"
                    ax.plot(*runs[label][terms[base][stage]], color=colors[label], alpha=shade, linewidth=1.2,
                            label=name)
            ax.set_title(f"{base}, {title}", fontsize=9)
            ax.tick_params(labelsize=8)
            if log:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            if row == len(present) - 1:
                ax.set_xlabel("iteration", fontsize=8)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_runs(runs: Dict[str, Dict[str, Series]], out_dir: str, log: bool = False) -> List[str]:
    """One PNG per metric that at least one run has (see the module docstring); returns the
    written paths.

    Args:
        runs: {label: extract_series(...)}, in legend order.
        out_dir: created if missing.
        log: logarithmic y for the losses and the gradient norm.
    """
    os.makedirs(out_dir, exist_ok=True)
    plots = [(LOSS, "total loss", log, None)]
    plots += [(m, SCALARS[m], log and m == "grad_norm", None) for m in ("lr", "grad_norm")]
    plots += [("time", SCALARS["time"], False, "data_time")]
    plots += [(m, f"COCO {m}", False, None) for m in AP_METRICS]
    written = []
    for metric, ylabel, log_axis, dashed in plots:
        path = _line_plot(runs, metric, ylabel, os.path.join(out_dir, f"{metric}.png"), log_axis, dashed)
        if path:
            written.append(path)
    path = plot_loss_terms(runs, os.path.join(out_dir, "loss_terms.png"), log)
    if path:
        written.insert(1, path)
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
    from detrex_lite.utils import json_io
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "summary.json")
    json_io.dump(summary, json_path, indent=2)
    lines = ["| run | iteration | " + " | ".join(AP_METRICS) + " |", "|---|---:|" + "---:|" * len(AP_METRICS)]
    for label, entry in summary.items():
        final = entry["final"]
        cells = [f"{final[m]:.1f}" if m in final else "-" for m in AP_METRICS]
        lines.append(f"| {label} | {final.get('eval_iteration', '-')} | " + " | ".join(cells) + " |")
    md_path = os.path.join(out_dir, "summary.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [json_path, md_path]


def run(args: argparse.Namespace) -> int:
    """plot_metrics with parsed arguments (``runs``, ``labels``, ``out``, ``summary``, ``log``):
    writes the plots (and the summary) into ``out`` (None: ``plots/`` in the first run folder),
    prints their paths and then ``wrote N plots to OUT``; returns the exit code (2: a mistake in
    the arguments or a folder without metrics.json, said in one line on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    labels = args.labels or [os.path.basename(os.path.normpath(folder)) for folder in args.runs]
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
    out = args.out if args.out is not None else os.path.join(args.runs[0], "plots")
    plots = plot_runs(runs, out, log=args.log)
    summary = write_summary(summarize(runs), out) if args.summary else []
    for path in plots + summary:
        print(path)
    also = " and " + ", ".join(os.path.basename(path) for path in summary) if summary else ""
    print(f"wrote {len(plots)} plots{also} to {out}")
    return 0
