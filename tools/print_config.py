#!/usr/bin/env python
"""Print a LazyConfig fully resolved, or the keys in which two configs differ.

    python tools/print_config.py projects/deformable_detr/configs/deformable_detr_r18_demo.py train.max_iter=600
    python tools/print_config.py projects/deformable_detr/configs/deformable_detr_r50_50ep.py \\
        --diff projects/deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py

The config (a .py config or a saved config.yaml) is loaded, the overrides are applied with the
same checks as train_net (an unknown key is an error that suggests the right one), and it is
printed as YAML with every interpolation resolved (``${..num_classes}`` shows the number) and
every derived value computed: a LazyCall of a function annotated to return a plain value
(int, float, bool, str), such as ``num_classes_from_dataset``, is called and shown as its
result, listed in the header. Objects are shown by their import path.

With --diff OTHER_CFG [overrides...] it prints the keys (dotted paths, list items by index)
whose resolved values differ between the two, and the keys only one of them has.
The command line is detrex_lite.cli.print_config; the work is detrex_lite.config.printing.
"""
import sys

from detrex_lite.cli.print_config import get_parser, main  # noqa: F401  (get_parser: tests/test_tools_docs.py)

if __name__ == "__main__":
    sys.exit(main())
