#!/usr/bin/env python
"""Plot training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one
or more training runs, overlaid with their names.

    python tools/plot_metrics.py output/deformable_detr_r18_demo output/detr_r18_demo \
        --labels "Deformable DETR" DETR --out benchmarks/demo_comparison [--log] [--summary]

Each run folder holds the ``metrics.json`` that detectron2's JSONWriter writes (one JSON object
per line). Writes one PNG per metric into ``--out``, one line per run:

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
The command line is detrex_lite.cli.plot_metrics; the work is detrex_lite.analysis.training_curves.
"""
import sys

from detrex_lite.cli.plot_metrics import get_parser, main  # noqa: F401  (get_parser: tests/test_tools_docs.py)

if __name__ == "__main__":
    sys.exit(main())
