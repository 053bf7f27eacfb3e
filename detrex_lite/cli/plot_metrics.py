"""``tools/plot_metrics.py``'s command line (stdlib only).

:func:`main` parses the arguments, then calls :func:`detrex_lite.analysis.training_curves.run`
(which needs neither torch nor detectron2; matplotlib is imported when a plot is drawn).
"""
import argparse
from typing import Optional, Sequence

from .entry import tool_parser

__all__ = ["get_parser", "main"]

DESCRIPTION = "Plot training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one"
EPILOG = (
    "example:\n  python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo "
    "--labels 'Deformable DETR' DETR --out output/demo_plots --summary"
)


def get_parser() -> argparse.ArgumentParser:
    """plot_metrics' command line: training output folders, labels, output folder, options."""
    parser = tool_parser("plot_metrics.py", DESCRIPTION, EPILOG)
    parser.add_argument("runs", nargs="+", help="training output folders, each with a metrics.json")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels (default: the folder names)")
    parser.add_argument("--out", default=".", help="folder for the PNGs (default: the current folder)")
    parser.add_argument("--summary", action="store_true", help="also write summary.json and summary.md")
    parser.add_argument("--log", action="store_true", help="logarithmic y axis for the losses and gradient norm")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run plot_metrics with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = get_parser().parse_args(argv)
    from detrex_lite.analysis.training_curves import run

    return run(args)
