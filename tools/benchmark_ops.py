#!/usr/bin/env python
"""Times multi-scale deformable attention: the compiled operator vs the PyTorch reference.

Shapes are those of Deformable DETR (M=8 heads, D=32 channels, L=4 levels, P=4 points):
  E1  encoder, N=2, levels (100,167) (50,84) (25,42) (13,21), Lq = S
  D1  decoder, E1's value, Lq = 300
  E2  encoder, N=1, levels (100,150) (50,75) (25,38) (13,19), Lq = S
  E3  encoder, N=8, levels (128,128) (64,64) (32,32) (16,16), Lq = S
  D2  decoder, E1's value, Lq = 900
Sampling locations are realistic: reference points (pixel centres for the encoder, uniform
points for the decoder) + the module's initial offset ring + ~0.5 px noise; weights are a
softmax over L*P.

Examples:
  python tools/benchmark_ops.py --device cpu --threads 2 --out benchmarks/ops_cpu.json
  python tools/benchmark_ops.py --device cuda --dtypes float32,float16 --shapes E1,D1,E3,D2
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detrex_lite.layers.ms_deform_attn_function import (  # noqa: E402
    extension_available,
    extension_info,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

NUM_HEADS, HEAD_DIM, NUM_POINTS = 8, 32, 4
E1_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
SHAPES = {
    # name: (batch, levels, number of queries or None for Lq = S)
    "E1": (2, E1_LEVELS, None),
    "D1": (2, E1_LEVELS, 300),
    "E2": (1, ((100, 150), (50, 75), (25, 38), (13, 19)), None),
    "E3": (8, ((128, 128), (64, 64), (32, 32), (16, 16)), None),
    "D2": (2, E1_LEVELS, 900),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(name, device, dtype, seed=0):
    """value, spatial_shapes, level_start_index, sampling_locations, attention_weights."""
    batch, levels, num_queries = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_value = int(areas.sum())
    num_levels = len(levels)
    if num_queries is None:  # encoder: one query per pixel, at the pixel centre
        refs = []
        for h, w in levels:
            ys, xs = torch.meshgrid(
                (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
            )
            refs.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        ref = torch.cat(refs).expand(batch, -1, -1)
    else:  # decoder: learned reference points, spread over the image
        ref = torch.rand(batch, num_queries, 2, generator=g)
    num_queries = ref.shape[1]
    # The module's initial offsets: a ring of directions, point k at distance k + 1 pixels.
    angles = torch.arange(NUM_HEADS) * (2 * math.pi / NUM_HEADS)
    ring = torch.stack([angles.cos(), angles.sin()], -1)
    ring = ring / ring.abs().max(-1, keepdim=True).values
    offsets = ring[:, None, None, :] * torch.arange(1, NUM_POINTS + 1).view(1, 1, -1, 1)  # (M, 1, P, 2)
    offsets = offsets + 0.5 * torch.randn(batch, num_queries, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=g)
    normalizer = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32)  # (L, 2) as (x, y)
    locations = ref[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    weights = torch.randn(batch, num_queries, NUM_HEADS, num_levels * NUM_POINTS, generator=g).softmax(-1)
    weights = weights.view(batch, num_queries, NUM_HEADS, num_levels, NUM_POINTS)
    value = torch.randn(batch, num_value, NUM_HEADS, HEAD_DIM, generator=g)
    to = dict(device=device, dtype=dtype)
    return (
        value.to(**to), spatial_shapes.to(device), level_start_index.to(device),
        locations.to(**to), weights.to(**to),
    )


def native(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, 64)


def reference(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)


def _timed(fn, device):
    """Milliseconds of one fn() call."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(fns, device, warmup, repeats):
    """Median milliseconds of each fn over `repeats` rounds after `warmup` rounds. The functions
    take turns within each round, so that a machine shared with other jobs slows them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t.append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def make_closures(impl, inputs):
    """(forward without autograd, forward + backward) for one implementation."""
    value, spatial_shapes, level_start_index, locations, weights = inputs

    def forward():
        with torch.no_grad():
            impl(value, spatial_shapes, level_start_index, locations, weights)

    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    grad = []

    def forward_backward():
        out = impl(leaves[0], spatial_shapes, level_start_index, leaves[1], leaves[2])
        if not grad:
            grad.append(torch.randn_like(out))
        torch.autograd.grad(out, leaves, grad[0])

    return forward, forward_backward


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,float64,float16,bfloat16")
    parser.add_argument("--shapes", default="E1,D1", help=f"comma-separated from {','.join(SHAPES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 5 on CPU, 100 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 CPU, 10 CUDA)")
    # Reference and native runs alternate within each repeat (fair under a shared machine).
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (100 if args.device == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (10 if args.device == "cuda" else 1)
    if not extension_available(args.device):
        print(f"warning: no compiled operator for {args.device}; 'native' below is the fallback", file=sys.stderr)

    if args.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = _cpu_name()
    rows = []
    header = f"{'shape':<5} {'dtype':<9} {'impl':<10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd x':>7} {'fwd+bwd x':>10}"
    print(f"device: {device_name}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"repeats {repeats}")
    print(header)
    print("-" * len(header))
    for name in args.shapes.split(","):
        for dtype_name in args.dtypes.split(","):
            inputs = make_inputs(name, args.device, DTYPES[dtype_name])
            ref_f, ref_b = make_closures(reference, inputs)
            nat_f, nat_b = make_closures(native, inputs)
            ref_fwd, nat_fwd = time_interleaved([ref_f, nat_f], args.device, warmup, repeats)
            ref_fb, nat_fb = time_interleaved([ref_b, nat_b], args.device, warmup, repeats)
            for impl, fwd, fb in (("reference", ref_fwd, ref_fb), ("native", nat_fwd, nat_fb)):
                row = dict(
                    shape=name, dtype=dtype_name, impl=impl, forward_ms=round(fwd, 3),
                    forward_backward_ms=round(fb, 3), forward_speedup=round(ref_fwd / fwd, 2),
                    forward_backward_speedup=round(ref_fb / fb, 2),
                )
                rows.append(row)
                print(f"{name:<5} {dtype_name:<9} {impl:<10} {fwd:>10.2f} {fb:>11.2f} "
                      f"{row['forward_speedup']:>7.2f} {row['forward_backward_speedup']:>10.2f}")
            del inputs
    if args.out:
        result = dict(
            device=args.device,
            device_name=device_name,
            torch=torch.__version__,
            cuda=torch.version.cuda,
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            # Other processes on the machine slow both implementations; recorded for context.
            load_average_1min=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            repeats=repeats,
            warmup=warmup,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            extension=extension_info(),
            shapes={k: dict(batch=v[0], levels=v[1], num_queries=v[2] or "S") for k, v in SHAPES.items()},
            results=rows,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
