#!/usr/bin/env python
"""Draw a detector's predictions next to the ground truth, image by image.

    python tools/visualize_results.py \\
        --predictions output/deformable_detr_r18_demo/inference/detrex_demo_val/coco_instances_results.json \\
        --dataset detrex_demo_val --worst 12 --out output/worst

Colour is the class everywhere (detrex_lite.visualization); the line style says what COCOeval's
matching (IoU 0.5, one prediction per object, highest score first) made of a box. Left: the
ground truth (white; solid: found by a prediction of its class with score >= --threshold,
dashed: missed). Right: the predictions with score >= --threshold (solid: correct, dashed:
false: wrong class, bad box, duplicate or background; dotted: on a crowd region). The threshold
used, and where it came from, is printed first. Without --worst the first --num images of the
dataset are drawn; with --worst N the N images with the most missed plus false boxes. Writes one PNG per image (<rank>_<image_id>.png) into --out and
prints the list with the counts.
"""
import argparse
import logging
import sys

from detrex_lite.cli.datasets import add_dataset_arguments, check_dataset_arguments


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visualize_results.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="COCO results json (coco_instances_results.json)")
    add_dataset_arguments(
        parser, "registered dataset the predictions are for (one registered in a training run's config file is "
        "registered again from the run's datasets.json when the predictions lie in its inference/ folder)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="draw predictions with at least this score (default: the score of maximal F1 at IoU "
                        "0.5 of these predictions, as the evaluation stored it with the checkpoint)")
    parser.add_argument("--worst", type=int, default=0, metavar="N",
                        help="draw the N images with the most missed + false boxes at IoU 0.5")
    parser.add_argument("--num", type=int, default=10, help="without --worst: draw the first NUM images (10)")
    parser.add_argument("--dedupe", type=float, default=None, metavar="IOU",
                        help="display only: of predictions overlapping by IoU > IOU (any class) draw the "
                        "best-scoring one (default: draw all; the counts are not affected)")
    parser.add_argument("--out", default="visualize_results", help="output folder (./visualize_results)")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_dataset_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.worst < 0 or args.num < 1:
        print("visualize_results: error: --worst must be >= 0 and --num >= 1", file=sys.stderr)
        return 2
    if args.dedupe is not None and not 0 <= args.dedupe <= 1:
        print(f"visualize_results: error: --dedupe {args.dedupe}: expected an IoU in [0, 1]", file=sys.stderr)
        return 2
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    from detrex_lite.apps.visualize_results import run
    from detrex_lite.cli.entry import exit_status
    from detrex_lite.errors import AnalysisError

    return exit_status("visualize_results", (AnalysisError,), run, args.predictions, args.dataset, args.out,
                       args.threshold, args.worst, args.num, dedupe_iou=args.dedupe, gt_json=args.gt_json,
                       image_root=args.image_root)


if __name__ == "__main__":
    sys.exit(main())
