#!/usr/bin/env python
"""Draw a detector's predictions next to the ground truth, image by image.

    python tools/visualize_results.py \\
        --predictions output/deformable_detr_r18_demo/inference/detrex_demo_val/coco_instances_results.json \\
        --dataset detrex_demo_val --worst 12 --out output/worst

Left: the ground truth (green: found at IoU 0.5 by a prediction of its class with score >=
--threshold, red: missed). Right: the predictions with score >= --threshold (green: correct,
red: false: wrong class, bad box, duplicate or background). The matching is COCOeval's (one
prediction per object, highest score first). Without --worst the first --num images of the
dataset are drawn; with --worst N the N images with the most missed plus false boxes. Writes
one PNG per image (<rank>_<image_id>.png) into --out and prints the list with the counts.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from detrex_lite.analysis import (  # noqa: E402
    AnalysisError,
    dataset_coco_gt,
    dataset_image_files,
    load_predictions,
    match_detections,
    predictions_coco,
)
from detrex_lite.analysis.drawing import BAD, GOOD, NEUTRAL, draw_boxes, save_side_by_side  # noqa: E402

logger = logging.getLogger("detrex_lite.visualize_results")


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


def draw_image(coco_gt, coco_dt, m, file_name: str, path: str, threshold: float, iou: float) -> str:
    from detectron2.data.detection_utils import read_image

    image = read_image(file_name, format="RGB")
    names = {c: coco_gt.cats[c]["name"] for c in coco_gt.getCatIds()}
    gt_boxes, gt_labels, gt_colors = [], [], []
    for ids, color, suffix in ((m.matched_gt, GOOD, ""), (m.missed_gt, BAD, ""), (m.ignored_gt, NEUTRAL, " (crowd)")):
        for i in ids:
            ann = coco_gt.anns[i]
            gt_boxes.append(_xyxy(ann["bbox"]))
            gt_labels.append(names[ann["category_id"]] + suffix)
            gt_colors.append(color)
    dt_boxes, dt_labels, dt_colors = [], [], []
    for ids, color in ((m.true_dt, GOOD), (m.false_dt, BAD), (m.ignored_dt, NEUTRAL)):
        for i in ids:
            ann = coco_dt.anns[i]
            dt_boxes.append(_xyxy(ann["bbox"]))
            dt_labels.append(f"{names[ann['category_id']]} {100 * ann['score']:.0f}%")
            dt_colors.append(color)
    left = draw_boxes(image, np.asarray(gt_boxes).reshape(-1, 4), gt_labels, gt_colors)
    right = draw_boxes(image, np.asarray(dt_boxes).reshape(-1, 4), dt_labels, dt_colors)
    num_gt = len(m.matched_gt) + len(m.missed_gt)
    num_dt = len(m.true_dt) + len(m.false_dt)
    title = (f"image {m.image_id} ({os.path.basename(file_name)}): {len(m.missed_gt)} of {num_gt} objects missed, "
             f"{len(m.false_dt)} of {num_dt} predictions false (IoU {iou:g}, score >= {threshold:g})")
    return save_side_by_side(left, right, "ground truth (green found, red missed)",
                             "predictions (green correct, red false)", title, path)


def run(predictions: str, dataset: str, out_dir: str, threshold: float = 0.5, worst: int = 0, num: int = 10,
        iou: float = 0.5) -> list:
    """Draws the selected images; returns [(path, ImageMatches)] in the order drawn."""
    coco_gt = dataset_coco_gt(dataset)
    results = load_predictions(predictions, coco_gt)
    coco_dt = predictions_coco(coco_gt, results, score_threshold=threshold)
    matches = match_detections(coco_gt, coco_dt, iou=iou)
    files = dataset_image_files(dataset)
    os.makedirs(out_dir, exist_ok=True)
    drawn = []
    chosen = select_images(matches, worst, num)
    print(f"{'worst' if worst else 'first'} {len(chosen)} of {len(matches)} images of {dataset} "
          f"(IoU {iou:g}, score >= {threshold:g}):")
    print("| rank | image_id | file | objects | predictions | missed | false |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for rank, image_id in enumerate(chosen, start=1):
        m = matches[image_id]
        if image_id not in files:
            raise AnalysisError(f"dataset '{dataset}' has no image file for image_id {image_id}")
        path = draw_image(coco_gt, coco_dt, m, files[image_id], os.path.join(out_dir, f"{rank:03d}_{image_id}.png"),
                          threshold, iou)
        drawn.append((path, m))
        print(f"| {rank} | {image_id} | {os.path.basename(files[image_id])} | "
              f"{len(m.matched_gt) + len(m.missed_gt)} | {len(m.true_dt) + len(m.false_dt)} | "
              f"{len(m.missed_gt)} | {len(m.false_dt)} |")
    print(f"Wrote {len(drawn)} images to {out_dir}")
    return drawn


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example:\n  python tools/visualize_results.py --predictions output/deformable_detr_r18_demo/inference/"
               "detrex_demo_val/coco_instances_results.json --dataset detrex_demo_val --worst 12 --out output/worst",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--predictions", required=True, help="COCO results json (coco_instances_results.json)")
    parser.add_argument("--dataset", required=True, help="registered dataset the predictions are for")
    parser.add_argument("--threshold", type=float, default=0.5, help="draw predictions with at least this score (0.5)")
    parser.add_argument("--worst", type=int, default=0, metavar="N",
                        help="draw the N images with the most missed + false boxes at IoU 0.5")
    parser.add_argument("--num", type=int, default=10, help="without --worst: draw the first NUM images (10)")
    parser.add_argument("--out", default="visualize_results", help="output folder (./visualize_results)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.worst < 0 or args.num < 1:
        print("visualize_results: error: --worst must be >= 0 and --num >= 1", file=sys.stderr)
        return 2
    try:
        run(args.predictions, args.dataset, args.out, args.threshold, args.worst, args.num)
    except AnalysisError as e:
        print(f"visualize_results: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
