#!/usr/bin/env python
r"""Whole-model speed and memory: inference images/s (batch 1 and 4, as in the Deformable DETR
paper) and training iterations/s, in fp32 and AMP, on CPU or GPU.

    python tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --device cuda --json output/benchmark.json

Inputs are synthetic (random pixels at ``--image-size``, a few random boxes per image for
training), so the numbers measure the model, not the data loader. Timings exclude ``--warmup``
iterations and synchronise CUDA before reading the clock. Peak memory is
``torch.cuda.max_memory_allocated`` for each measurement on GPU; on CPU it is the process's peak
resident set size so far (it never goes down, so read it as an upper bound).
Weights are not loaded (speed does not depend on them); pass ``--opts`` to change the model.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import sys
import warnings
import time
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402
# detectron2 uses torch.jit.script at import time, which recent torch flags as deprecated.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from tabulate import tabulate  # noqa: E402

from detrex_lite.predictor import load_config  # noqa: E402

logger = logging.getLogger("detrex_lite.benchmark")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="inference batch sizes")
    parser.add_argument("--train-batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "amp"], choices=["fp32", "amp"])
    parser.add_argument(
        "--amp-dtype", default=None, choices=["float16", "bfloat16"],
        help="autocast dtype for amp (default: float16 on CUDA, bfloat16 on CPU)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def synthetic_inputs(
    batch_size: int, image_size: Sequence[int], num_classes: int, with_targets: bool, generator: torch.Generator
) -> List[Dict]:
    """detectron2-style model inputs: random RGB uint8 images, and 1-5 random boxes each."""
    h, w = image_size
    inputs = []
    for _ in range(batch_size):
        item = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator), "height": h, "width": w}
        if with_targets:
            n = int(torch.randint(1, 6, (1,), generator=generator))
            xy0 = torch.rand(n, 2, generator=generator) * 0.7
            wh = 0.05 + torch.rand(n, 2, generator=generator) * 0.25
            boxes = torch.cat([xy0, xy0 + wh], dim=1) * torch.tensor([w, h, w, h], dtype=torch.float32)
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(boxes)
            instances.gt_classes = torch.randint(0, num_classes, (n,), generator=generator)
            item["instances"] = instances
        inputs.append(item)
    return inputs


def amp_dtype(device: torch.device, name: Optional[str]) -> torch.dtype:
    """float16 on CUDA and bfloat16 on CPU unless ``name`` says otherwise."""
    if name is None:
        name = "float16" if device.type == "cuda" else "bfloat16"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype``, or a no-op for fp32 (``dtype`` None)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(step, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` averaged over ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_inference(model, device, batch_size, image_size, dtype, iters, warmup, generator) -> Dict:
    """Eval-mode forward passes on ``batch_size`` images; ``dtype`` None is fp32, else autocast."""
    model.eval()
    inputs = synthetic_inputs(batch_size, image_size, 1, False, generator)

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            model(inputs)

    _reset_peak(device)
    seconds = _timed(step, iters, warmup, device)
    return {"images_per_s": batch_size / seconds, "ms_per_iter": 1000 * seconds, "peak_mem_mb": _peak_mb(device)}


def bench_train(model, optimizer, device, batch_size, image_size, num_classes, dtype, iters, warmup, generator) -> Dict:
    """Training iterations (forward, backward, optimizer step) as the trainer runs them."""
    model.train()
    inputs = synthetic_inputs(batch_size, image_size, num_classes, True, generator)
    # float16 gradients need loss scaling; bfloat16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step():
        with _autocast(device, dtype):
            losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    _reset_peak(device)
    seconds = _timed(step, iters, warmup, device)
    return {"iters_per_s": 1 / seconds, "ms_per_iter": 1000 * seconds, "peak_mem_mb": _peak_mb(device)}


def build_optimizer(cfg, model):
    """The config's optimizer (param groups and all); AdamW(lr=1e-4) for a model-only config."""
    if "optimizer" in cfg:
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)
    logger.warning("Config has no optimizer; using AdamW(lr=1e-4, weight_decay=1e-4)")
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)


def environment(device: torch.device) -> Dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def run(args) -> Dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = load_config(args.config_file, args.opts)
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model).to(device)
    num_classes = int(getattr(model, "num_classes", 1))
    generator = torch.Generator().manual_seed(args.seed)
    rows = []

    def measure(row: Dict, fn, *fn_args) -> None:
        # One failing measurement (e.g. out of memory at batch 4) is reported, not fatal.
        try:
            row.update(fn(*fn_args))
        except (RuntimeError, ValueError) as err:
            logger.error("%s failed: %s", row, err)
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        logger.info("%s", row)

    for precision in args.precisions:
        dtype = amp_dtype(device, args.amp_dtype) if precision == "amp" else None
        label = precision if dtype is None else f"amp-{str(dtype).replace('torch.', '')}"
        if "inference" in args.modes:
            for bs in args.batch_sizes:
                measure(
                    {"mode": "inference", "precision": label, "batch_size": bs},
                    bench_inference, model, device, bs, args.image_size, dtype, args.iters, args.warmup, generator,
                )
        if "train" in args.modes:
            optimizer = build_optimizer(cfg, model)
            measure(
                {"mode": "train", "precision": label, "batch_size": args.train_batch_size},
                bench_train, model, optimizer, device, args.train_batch_size, args.image_size, num_classes,
                dtype, args.iters, args.warmup, generator,
            )
    return {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "image_size": list(args.image_size),
        "iters": args.iters,
        "warmup": args.warmup,
        "environment": environment(device),
        "results": rows,
    }


def format_table(report: Dict) -> str:
    table = []
    for r in report["results"]:
        if "error" in r:
            table.append([r["mode"], r["precision"], r["batch_size"], r["error"][:60], "-", "-"])
            continue
        speed = f"{r['images_per_s']:.2f} img/s" if r["mode"] == "inference" else f"{r['iters_per_s']:.2f} it/s"
        table.append([r["mode"], r["precision"], r["batch_size"], speed, f"{r['ms_per_iter']:.1f}", f"{r['peak_mem_mb']:.0f}"])
    env = report["environment"]
    header = (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}, "
        f"image {report['image_size'][0]}x{report['image_size'][1]}, {report['iters']} iters"
    )
    peak = "peak MB" if env["device"].startswith("cuda") else "peak RSS MB"
    return header + "\n" + tabulate(
        table, headers=["mode", "precision", "batch", "speed", "ms/iter", peak], tablefmt="pipe"
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
    setup_logger(name="detrex_lite")
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    print(format_table(report))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
