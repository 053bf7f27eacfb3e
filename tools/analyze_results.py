#!/usr/bin/env python
"""COCO error analysis, confusion matrix and per-class AP of a detector's predictions.

    python tools/analyze_results.py \\
        --predictions output/deformable_detr_r18_demo/inference/detrex_demo_val/coco_instances_results.json \\
        --dataset detrex_demo_val --out output/analysis

The predictions are a COCO results json (what train_net's evaluation writes under
<output_dir>/inference/<dataset>/); the dataset is any registered detectron2 dataset (the demo
datasets are built in; one the run registered in its config file is registered again from the
run's datasets.json), or --gt-json FILE for a COCO json registered nowhere. Everything is computed by pycocotools' COCOeval. Writes into --out:

  error_analysis.png          stacked PR curves C75, C50, Loc, Sim, Oth, BG, FN of the class
                              average, one panel per object size (all / small / medium / large)
  per_class/<k>_<class>.png   the same for each class
  error_analysis.json, .csv   the AP (%) of every curve per class and size, with object counts
  confusion_matrix.png, .csv  ground truth x prediction counts at --iou and --threshold,
                              background row (false detections) and column (missed objects)
  per_class_ap.json, .csv     COCO AP, AP50, AP75, APs, APm, APl per class, object and
                              prediction counts, and COCO's overall numbers

and prints the tables. See docs/tools.md for what each curve means.
"""
import argparse
import logging
import sys

from detrex_lite.cli.datasets import add_dataset_arguments, check_dataset_arguments


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analyze_results.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", required=True, help="COCO results json (coco_instances_results.json)")
    add_dataset_arguments(
        parser, "registered dataset the predictions are for (one registered in a training run's config file is "
        "registered again from the run's datasets.json when the predictions lie in its inference/ folder)",
        images_needed=False)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", "--score-threshold", dest="score_threshold", type=float, default=None,
                        help="confusion matrix: keep predictions with at least this score (default: the score of "
                        "maximal F1 at IoU 0.5 of these predictions, as the evaluation stored it with the checkpoint)")
    parser.add_argument("--iou", type=float, default=0.5, help="confusion matrix IoU threshold (default 0.5)")
    parser.add_argument("--no-class-plots", action="store_true", help="skip the per-class PR figures")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_dataset_arguments(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    from detrex_lite.apps.analyze_results import run
    from detrex_lite.cli.entry import exit_status
    from detrex_lite.errors import AnalysisError

    return exit_status("analyze_results", (AnalysisError,), run, args.predictions, args.dataset, args.out,
                       args.score_threshold, args.iou, not args.no_class_plots, gt_json=args.gt_json,
                       image_root=args.image_root)


if __name__ == "__main__":
    sys.exit(main())
