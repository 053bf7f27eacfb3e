"""Timed loops of the benchmark: synthetic inputs, eval forwards, training steps, matmul peaks.

Every loop excludes its warm-up calls and synchronises CUDA before reading the clock. Peak
memory is ``torch.cuda.max_memory_allocated`` on GPU; on CPU the process's peak resident set
size so far (it never goes down: an upper bound).
"""
import logging
import resource
import time
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from detrex_lite.engine.trainer import _AMP_DTYPES
from detrex_lite.export.flops import model_flop_analysis, synthetic_image_inputs

__all__ = [
    "synthetic_inputs", "amp_dtype", "bench_inference", "bench_compiled", "bench_train", "matmul_peak_gflops",
    "model_gflop", "build_optimizer",
]

logger = logging.getLogger("detrex_lite.benchmark")


def synthetic_inputs(
    batch_size: int, image_size: Sequence[int], num_classes: int, with_targets: bool, generator: torch.Generator
) -> List[Dict]:
    """detectron2-style model inputs: ``batch_size`` random RGB uint8 images of ``image_size``
    (H, W) and, ``with_targets``, 1-5 random boxes each (absolute xyxy, inside the image)."""
    h, w = image_size
    inputs = []
    for _ in range(batch_size):
        (item,) = synthetic_image_inputs(image_size, torch.device("cpu"), generator=generator)
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
    """The trainer's AMP dtype for ``name``; float16 on CUDA and bfloat16 on CPU when None."""
    if name is None:
        name = "float16" if device.type == "cuda" else "bfloat16"
    return _AMP_DTYPES[name]


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


def _timed(step, iters: int, warmup: int, device: torch.device, cpu_seconds: Optional[List[float]] = None) -> float:
    """Seconds per call of ``step`` averaged over ``iters`` calls after ``warmup`` calls.
    ``cpu_seconds`` (a list) receives the process's CPU time per call (all threads, user + system)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    _sync(device)
    if cpu_seconds is not None:
        cpu_seconds.append((time.process_time() - cpu_start) / iters)
    return (time.perf_counter() - start) / iters


def bench_inference(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=None) -> Dict:
    """Eval-mode forward passes on ``batch_size`` images; ``dtype`` None is fp32, else autocast.
    Returns images_per_s, ms_per_iter, cpu_ms_per_iter (process CPU time) and peak_mem_mb."""
    model.eval()
    if inputs is None:
        inputs = synthetic_inputs(batch_size, image_size, 1, False, generator)

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            model(inputs)

    _reset_peak(device)
    cpu_seconds: List[float] = []
    seconds = _timed(step, iters, warmup, device, cpu_seconds)
    return {
        "images_per_s": batch_size / seconds, "ms_per_iter": 1000 * seconds, "cpu_ms_per_iter": 1000 * cpu_seconds[0],
        "peak_mem_mb": _peak_mb(device),
    }


def bench_compiled(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=None) -> Dict:
    """:func:`bench_inference` of a ``torch.compile``'d model after two untimed calls (the first
    compiles for the input shape, the second may recompile), whose time is ``compile_s``."""
    start = time.perf_counter()
    bench_inference(model, device, batch_size, image_size, dtype, 1, 1, generator, inputs=inputs)
    compile_s = time.perf_counter() - start
    result = bench_inference(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=inputs)
    return {**result, "compile_s": compile_s}


def bench_train(
    model, optimizer, device, batch_size, image_size, num_classes, dtype, iters, warmup, generator, inputs=None
) -> Dict:
    """Training iterations (forward, backward, optimizer step) as the trainer runs them.
    Returns iters_per_s, ms_per_iter and peak_mem_mb."""
    model.train()
    if inputs is None:
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


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s (2 n^3 per product) of an n x n matmul in ``dtype`` on the CPU, best of repeated runs."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_gflop(model, image_size: Sequence[int]) -> float:
    """fvcore FLOPs of one eval forward at ``image_size`` in GFLOP (one multiply-add = 1, as
    tools/analyze_model.py and the papers count)."""
    model.eval()
    with torch.no_grad():
        return model_flop_analysis(model, synthetic_image_inputs(image_size, torch.device("cpu"))).total() / 1e9


def build_optimizer(cfg, model):
    """The config's optimizer (param groups and all); AdamW(lr=1e-4) for a model-only config."""
    if "optimizer" in cfg:
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)
    logger.warning("Config has no optimizer; using AdamW(lr=1e-4, weight_decay=1e-4)")
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
