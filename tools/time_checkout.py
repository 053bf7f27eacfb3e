#!/usr/bin/env python
r"""Times eval forwards of a config's model as built by *another* detrex_lite checkout, so that a
change can be measured against an older build side by side (``tools/benchmark.py
--baseline-tree DIR`` runs this once per batch size, in a subprocess, on the inputs it times its
own rows on).

    python tools/time_checkout.py --tree /path/to/old/checkout --config-file CONFIG \
        --inputs inputs.pt --iters 3 --warmup 1 --num-threads 2 --tune-allocator

The checkout must have its compiled operator built (``detrex_lite/_C*.so``). Only interfaces
that every detrex_lite version has are used: ``LazyConfig.load``, ``instantiate(cfg.model)``,
``model.eval()`` and ``model(list[dict])``. Random weights (``--seed``); speed does not depend on
them. Prints one JSON object: ms per iteration (wall and process CPU time), peak RSS, the
where its ``detrex_lite`` was imported from (to show it was that
checkout's and not this one's).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from typing import Dict, List, Optional, Sequence


def _tune_allocator() -> bool:
    """This checkout's :func:`detrex_lite.inference.tune_cpu_allocator` (an old ``--tree`` may not
    have it), loaded from its file: ``import detrex_lite`` here must find the timed checkout's."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "detrex_lite", "inference.py")
    spec = importlib.util.spec_from_file_location("_time_checkout_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tune_cpu_allocator()


def time_checkout(
    tree: str, config_file: str, inputs: List[Dict], iters: int, warmup: int, opts: Sequence[str] = (), seed: int = 0
) -> Dict:
    """Builds ``config_file`` (relative to ``tree``) with that checkout's code and times
    ``iters`` no-grad eval forwards on ``inputs`` after ``warmup`` ones. Call in a process whose
    ``sys.path`` starts with ``tree``."""
    import torch
    from detectron2.config import LazyConfig, instantiate

    import detrex_lite

    cfg = LazyConfig.load(os.path.join(tree, config_file))
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    torch.manual_seed(seed)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        for _ in range(warmup):
            model(inputs)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(iters):
            model(inputs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "ms_per_iter": 1000 * seconds / iters,
        "cpu_ms_per_iter": 1000 * cpu_seconds / iters,
        "images_per_s": len(inputs) * iters / seconds,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "imported_from": os.path.dirname(os.path.abspath(detrex_lite.__file__)),
    }


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True, help="the detrex_lite checkout whose model is timed")
    parser.add_argument("--config-file", required=True, help="relative to --tree")
    parser.add_argument("--inputs", required=True, help="torch.save'd list of detectron2 input dicts")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--tune-allocator", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opts", nargs="*", default=[])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    tree = os.path.abspath(args.tree)
    if not os.path.isdir(os.path.join(tree, "detrex_lite")):
        raise SystemExit(f"time_checkout: error: {tree} has no detrex_lite/ package")
    sys.path.insert(0, tree)
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.tune_allocator:
        _tune_allocator()
    inputs = torch.load(args.inputs, weights_only=False)
    result = time_checkout(tree, args.config_file, inputs, args.iters, args.warmup, args.opts, args.seed)
    result["num_threads"] = torch.get_num_threads()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
