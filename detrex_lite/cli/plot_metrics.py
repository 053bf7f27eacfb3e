"""``tools/plot_metrics.py``'s command line (stdlib only).

:func:`main` parses the arguments, then calls :func:`detrex_lite.analysis.training_curves.run`
(which needs neither torch nor detectron2; matplotlib is imported when a plot is drawn).
"""
import argparse
from typing import Optional, Sequence

from .entry import tool_parser

__all__ = ["get_parser", "main"]

DESCRIPTION = r"""Plot training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one
or more training runs, overlaid with their names.

    python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo \
        --labels "Deformable DETR" DETR --summary

Reads each run folder's metrics.json and writes one PNG per metric into --out, by default the
plots/ folder of the first run (output/deformable_detr_r18_demo/plots above); --summary also
writes summary.json and summary.md there. The last line printed names the folder.
"""
EPILOG = (
    "example (the plots of two runs in a folder of their own):\n  python tools/plot_metrics.py output/deformable_detr_r18_demo "
    "output/detr_r18_demo --labels 'Deformable DETR' DETR --out output/demo_plots --summary"
)


def get_parser() -> argparse.ArgumentParser:
    """plot_metrics' command line: training output folders, labels, output folder, options."""
    parser = tool_parser("plot_metrics.py", DESCRIPTION, EPILOG)
    parser.add_argument("runs", nargs="+", help="training output folders, each with a metrics.json")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels (default: the folder names)")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="folder for the PNGs (default: RUN/plots of the first run folder)"
    )
    parser.add_argument("--summary", action="store_true", help="also write summary.json and summary.md")
    parser.add_argument("--log", action="store_true", help="logarithmic y axis for the losses and gradient norm")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run plot_metrics with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = get_parser().parse_args(argv)
    from detrex_lite.analysis.training_curves import run

    return run(args)
