"""``tools/analyze_results.py``: COCO error analysis, confusion matrix and per-class AP of a
detector's predictions, written as tables and figures."""
import csv
import logging
import os
import re
from typing import Optional

from detrex_lite.analysis import (
    ERROR_TYPES,
    AnalysisError,
    confusion_matrix,
    dataset_coco_gt,
    error_analysis,
    load_predictions,
    per_class_ap,
    predictions_coco,
    results_dataset,
)
from detrex_lite.analysis.error_analysis import AREAS
from detrex_lite.analysis.threshold import nothing_passes_message, threshold_for_predictions
from detrex_lite.utils import json_io

logger = logging.getLogger("detrex_lite.analyze_results")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _write_csv(path: str, header, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def error_tables(rows, out_dir: str):
    """error_analysis.json and .csv from ErrorAnalysis.table() rows."""
    header = ["class", "area", "num_gt", *ERROR_TYPES]
    json_path = os.path.join(out_dir, "error_analysis.json")
    json_io.dump({"unit": "AP %, 100 detections per image", "rows": rows}, json_path, indent=1)
    csv_path = _write_csv(os.path.join(out_dir, "error_analysis.csv"), header,
                          [[r[h] if r[h] is not None else "" for h in header] for r in rows])
    return [json_path, csv_path]


def print_error_table(rows) -> None:
    print("| area | objects | " + " | ".join(ERROR_TYPES) + " |")
    print("|---|---:|" + "---:|" * len(ERROR_TYPES))
    for r in rows:
        if r["class"] == "all classes":
            print(f"| {r['area']} | {r['num_gt']} | " + " | ".join(_fmt(r[t]) for t in ERROR_TYPES) + " |")


def ap_tables(result: dict, out_dir: str):
    json_path = os.path.join(out_dir, "per_class_ap.json")
    json_io.dump(result, json_path, indent=1)
    header = ["class", "category_id", "num_gt", "num_predictions", *AP_KEYS]
    rows = [[r[h] if r[h] is not None else "" for h in header] for r in result["per_class"]]
    rows.append(["all classes", "", sum(r["num_gt"] for r in result["per_class"]),
                 sum(r["num_predictions"] for r in result["per_class"]),
                 *[result["overall"][k] if result["overall"][k] is not None else "" for k in AP_KEYS]])
    return [json_path, _write_csv(os.path.join(out_dir, "per_class_ap.csv"), header, rows)]


def print_ap_table(result: dict) -> None:
    print("| class | objects | predictions | " + " | ".join(AP_KEYS) + " |")
    print("|---|---:|---:|" + "---:|" * len(AP_KEYS))
    for r in result["per_class"]:
        print(f"| {r['class']} | {r['num_gt']} | {r['num_predictions']} | "
              + " | ".join(_fmt(r[k]) for k in AP_KEYS) + " |")
    total_gt = sum(r["num_gt"] for r in result["per_class"])
    total_dt = sum(r["num_predictions"] for r in result["per_class"])
    print(f"| **all** | {total_gt} | {total_dt} | " + " | ".join(_fmt(result["overall"][k]) for k in AP_KEYS) + " |")


def confusion_outputs(matrix, names, out_dir: str, iou: float, score_threshold: float):
    from detrex_lite.analysis.plots import plot_confusion_matrix

    csv_path = _write_csv(os.path.join(out_dir, "confusion_matrix.csv"), ["ground truth \\ predicted", *names],
                          [[name, *map(int, row)] for name, row in zip(names, matrix)])
    png = plot_confusion_matrix(matrix, names, os.path.join(out_dir, "confusion_matrix.png"), iou, score_threshold)
    return [png, csv_path]


def run(predictions: str, dataset: Optional[str], out_dir: str, score_threshold: Optional[float] = None,
        iou: float = 0.5, class_plots: bool = True, gt_json: Optional[str] = None,
        image_root: Optional[str] = None) -> dict:
    """Computes and writes everything; returns {"error_analysis": rows, "per_class_ap": ...,
    "confusion_matrix": {"names", "counts"}, "score_threshold": {"value", "source"}, "files": [...]}.
    ``score_threshold`` (the confusion matrix's) None: the one of maximal F1 at IoU 0.5 of these
    predictions (:func:`detrex_lite.analysis.threshold.threshold_for_predictions`). The ground
    truth: the registered ``dataset`` (one the predictions' training run recorded is registered as
    it was), or ``gt_json`` (:func:`detrex_lite.analysis.results_dataset`)."""
    from detrex_lite.analysis.plots import plot_error_analysis

    dataset = results_dataset(predictions, dataset, gt_json, image_root)
    coco_gt = dataset_coco_gt(dataset)
    results = load_predictions(predictions, coco_gt)
    if not results:
        raise AnalysisError(f"{predictions}: no predictions in the file")
    coco_dt = predictions_coco(coco_gt, results)
    choice = threshold_for_predictions(score_threshold, coco_gt.dataset.get("annotations", []), results,
                                       predictions, dataset)
    score_threshold = choice.value
    os.makedirs(out_dir, exist_ok=True)
    files = []

    analysis = error_analysis(coco_gt, coco_dt)
    rows = analysis.table()
    files += error_tables(rows, out_dir)
    areas = [a for a, n in zip(AREAS, analysis.num_gt.sum(axis=0)) if n > 0 or a == "all"]
    files.append(plot_error_analysis(analysis, os.path.join(out_dir, "error_analysis.png"), areas=areas))
    if class_plots:
        os.makedirs(os.path.join(out_dir, "per_class"), exist_ok=True)
        for k, name in enumerate(analysis.class_names):
            path = os.path.join(out_dir, "per_class", f"{k:02d}_{_safe(name)}.png")
            files.append(plot_error_analysis(analysis, path, class_index=k, areas=areas))

    ap = per_class_ap(coco_gt, coco_dt)
    files += ap_tables(ap, out_dir)

    matrix, names = confusion_matrix(coco_gt, predictions_coco(coco_gt, results, score_threshold), iou=iou)
    files += confusion_outputs(matrix, names, out_dir, iou, score_threshold)

    print(f"\n{dataset}: {len(results)} predictions on {len({r['image_id'] for r in results})} of "
          f"{len(coco_gt.getImgIds())} images, {sum(r['num_gt'] for r in ap['per_class'])} objects\n")
    print("COCO error analysis, class average (AP %, 100 detections per image; each column removes "
          "one more kind of error):")
    print_error_table(rows)
    print("\nPer-class COCO AP:")
    print_ap_table(ap)
    k = len(names) - 1
    print(f"\nConfusion matrix at {choice.describe()}")
    if not any(r["score"] >= score_threshold for r in results):
        print(nothing_passes_message(score_threshold, max(r["score"] for r in results)))
    found = int(matrix[:k, :k].trace())
    confused = int(matrix[:k, :k].sum()) - found
    print(f"At IoU {iou:g} and score >= {score_threshold:.3g}: {found} objects found, {confused} taken for "
          f"another class, {int(matrix[:k, k].sum())} missed; {int(matrix[k, :k].sum())} false detections on "
          "background or duplicates")
    print("\nWrote:")
    for path in files:
        if "per_class" + os.sep not in path:
            print(f"  {path}")
    if class_plots:
        print(f"  {os.path.join(out_dir, 'per_class')}/ ({len(analysis.class_names)} PNGs)")
    return {"error_analysis": rows, "per_class_ap": ap,
            "confusion_matrix": {"names": names, "counts": matrix.tolist()},
            "score_threshold": {"value": score_threshold, "source": choice.source}, "files": files}
