#!/usr/bin/env python
"""Plot training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one
or more training runs, overlaid with their names.

    python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo \
        --labels "Deformable DETR" DETR [--out DIR] [--log] [--summary]

The PNGs go to --out, by default the plots/ folder of the first run given.

What it reads and writes (metrics.json in, one PNG per metric out, resumed runs, ``--summary``)
is described in detrex_lite.analysis.training_curves' docstring.
The command line is detrex_lite.cli.plot_metrics; the work is detrex_lite.analysis.training_curves.
"""
import sys

from detrex_lite.cli.plot_metrics import get_parser, main  # noqa: F401  (get_parser: tests/test_tools_docs.py)

if __name__ == "__main__":
    sys.exit(main())
