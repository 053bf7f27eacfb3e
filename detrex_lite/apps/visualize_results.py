"""``tools/visualize_results.py``: a detector's predictions next to the ground truth, image by
image, with COCOeval's matches shown by line style (solid: found / correct, dashed: missed /
false, dotted: crowd)."""
import os
from typing import List, Optional, Tuple

import numpy as np

from detrex_lite.analysis import (
    AnalysisError,
    ImageMatches,
    dataset_coco_gt,
    dataset_image_files,
    load_predictions,
    match_detections,
    predictions_coco,
    results_dataset,
)
from detrex_lite.analysis.threshold import nothing_passes_message, threshold_for_predictions
from detrex_lite.visualization import DASHED, DOTTED, SOLID, dedupe, draw_detections, save_side_by_side

GT_TITLE = "ground truth (solid: found, dashed: missed)"
DT_TITLE = "predictions (solid: correct, dashed: false)"


def _xyxy(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def select_images(matches: dict, worst: int = 0, num: int = 10) -> list:
    """Image ids to draw: the ``worst`` images with the most missed + false boxes (ties: lower
    image id first), else the first ``num`` image ids in ascending order."""
    if worst:
        ranked = sorted(matches.values(), key=lambda m: (-m.num_errors, m.image_id))
        return [m.image_id for m in ranked[:worst]]
    return sorted(matches)[:num]


def draw_image(coco_gt, coco_dt, m: ImageMatches, file_name: str, path: str, threshold: float, iou: float,
               dedupe_iou: Optional[float] = None, min_side: int = 480, best_score: Optional[float] = None) -> str:
    """Writes ``path``: the image's ground truth (left) and predictions (right), each panel
    enlarged so that its longer side is at least ``min_side`` pixels. ``dedupe_iou`` drops, from
    the drawing only, predictions overlapping a better-scoring drawn one by more than that IoU.
    ``best_score``: the image's highest prediction score, named in the title when none reaches
    ``threshold``."""
    from detrex_lite.data.dataset_mapper import read_image_file

    image = read_image_file(file_name, "RGB")
    contiguous = {c: k for k, c in enumerate(sorted(coco_gt.getCatIds()))}
    names = {c: coco_gt.cats[c]["name"] for c in coco_gt.getCatIds()}
    gt = [(coco_gt.anns[i], style, suffix) for ids, style, suffix in
          ((m.matched_gt, SOLID, ""), (m.missed_gt, DASHED, ""), (m.ignored_gt, DOTTED, " (crowd)")) for i in ids]
    dt = [(coco_dt.anns[i], style) for ids, style in
          ((m.true_dt, SOLID), (m.false_dt, DASHED), (m.ignored_dt, DOTTED)) for i in ids]
    dt.sort(key=lambda item: -item[0]["score"])  # best first: its label is placed first
    dt_boxes = np.asarray([_xyxy(a["bbox"]) for a, _ in dt]).reshape(-1, 4)
    if dedupe_iou is not None and dt:
        keep = dedupe(dt_boxes, [a["score"] for a, _ in dt], dedupe_iou)
        dt, dt_boxes = [dt[i] for i in keep], dt_boxes[keep]
    scale = max(1.0, min_side / max(image.shape[:2]))
    left = draw_detections(
        image, np.zeros((0, 4)), [], [], scale=scale,
        gt_boxes=np.asarray([_xyxy(a["bbox"]) for a, _, _ in gt]).reshape(-1, 4),
        gt_labels=[names[a["category_id"]] + suffix for a, _, suffix in gt],
        gt_class_ids=[contiguous[a["category_id"]] for a, _, _ in gt], gt_styles=[s for _, s, _ in gt])
    right = draw_detections(
        image, dt_boxes, [f"{names[a['category_id']]} {100 * a['score']:.0f}%" for a, _ in dt],
        [contiguous[a["category_id"]] for a, _ in dt], styles=[s for _, s in dt], scale=scale)
    num_gt = len(m.matched_gt) + len(m.missed_gt)
    num_dt = len(m.true_dt) + len(m.false_dt)
    title = (f"image {m.image_id} ({os.path.basename(file_name)}): {len(m.missed_gt)} of {num_gt} objects missed, "
             f"{len(m.false_dt)} of {num_dt} predictions false (IoU {iou:g}, score >= {threshold:.3g})")
    if num_dt == 0 and best_score is not None:
        title += f"; highest score {best_score:.3g}"
    return save_side_by_side(left, right, GT_TITLE, DT_TITLE, title, path)


def run(predictions: str, dataset: Optional[str], out_dir: str, threshold: Optional[float] = None, worst: int = 0,
        num: int = 10, iou: float = 0.5, dedupe_iou: Optional[float] = None, gt_json: Optional[str] = None,
        image_root: Optional[str] = None) -> List[Tuple[str, ImageMatches]]:
    """Draws the selected images; returns [(path, ImageMatches)] in the order drawn. The matching
    (and the counts printed) are of all predictions with score >= ``threshold``, whatever
    ``dedupe_iou`` hides from the drawing. ``threshold`` None: the one of maximal F1 at IoU 0.5
    of these predictions (:func:`detrex_lite.analysis.threshold.threshold_for_predictions`). The
    ground truth: the registered ``dataset`` (one the predictions' training run recorded is
    registered as it was), or ``gt_json`` with its ``image_root``
    (:func:`detrex_lite.analysis.results_dataset`)."""
    dataset = results_dataset(predictions, dataset, gt_json, image_root)
    coco_gt = dataset_coco_gt(dataset)
    results = load_predictions(predictions, coco_gt)
    choice = threshold_for_predictions(threshold, coco_gt.dataset.get("annotations", []), results, predictions, dataset)
    threshold = choice.value
    print(choice.describe())
    best_scores: dict = {}
    for r in results:
        best_scores[r["image_id"]] = max(best_scores.get(r["image_id"], float("-inf")), r["score"])
    if not any(r["score"] >= threshold for r in results):
        print(nothing_passes_message(threshold, max(best_scores.values(), default=None)))
    coco_dt = predictions_coco(coco_gt, results, score_threshold=threshold)
    matches = match_detections(coco_gt, coco_dt, iou=iou)
    files = dataset_image_files(dataset)
    os.makedirs(out_dir, exist_ok=True)
    drawn = []
    chosen = select_images(matches, worst, num)
    print(f"{'worst' if worst else 'first'} {len(chosen)} of {len(matches)} images of {dataset} "
          f"(IoU {iou:g}, score >= {threshold:.3g}):")
    print("| rank | image_id | file | objects | predictions | missed | false |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for rank, image_id in enumerate(chosen, start=1):
        m = matches[image_id]
        if image_id not in files:
            raise AnalysisError(f"dataset '{dataset}' has no image file for image_id {image_id}")
        path = draw_image(coco_gt, coco_dt, m, files[image_id], os.path.join(out_dir, f"{rank:03d}_{image_id}.png"),
                          threshold, iou, dedupe_iou, best_score=best_scores.get(image_id))
        drawn.append((path, m))
        print(f"| {rank} | {image_id} | {os.path.basename(files[image_id])} | "
              f"{len(m.matched_gt) + len(m.missed_gt)} | {len(m.true_dt) + len(m.false_dt)} | "
              f"{len(m.missed_gt)} | {len(m.false_dt)} |")
    print(f"Wrote {len(drawn)} images to {out_dir}")
    return drawn
