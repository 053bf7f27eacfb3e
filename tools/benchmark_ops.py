#!/usr/bin/env python
"""Times multi-scale deformable attention: the compiled operator vs the PyTorch reference, and
compares both with a floor computed from the bytes that must move.

Shapes (M heads, D channels per head, L = 4 levels, P points; M=8, D=32, P=4 unless stated):
  E1        encoder training, N=2, levels (100,167) (50,84) (25,42) (13,21), Lq = S
  E2        encoder inference, N=1, levels (100,150) (50,75) (25,38) (13,19), Lq = S
  E3        encoder, N=8, levels (128,128) (64,64) (32,32) (16,16), Lq = S
  D1, D2    decoder, E1's value, Lq = 300 / 900
  R_uniform E1 with sampling locations uniform in [0, 1] (no locality)
  R_oob10   E1 with 10% of all samples moved outside every map (they read zeros), on top of
            the ~8.7% of E1's realistic samples that already fall outside near the borders
  R_D64     E1 with D = 64
  R_P8      E1 with P = 8
  R_D48     E1 with D = 48 (not a power of two)
  tiny      N=1, levels (8,12) (4,6) (2,3) (1,2), Lq = S (smoke tests)
Realistic locations: reference points (pixel centres for the encoder, uniform points for the
decoder) + the module's initial offset pattern (head h at angle 2*pi*h/M, point k at k+1 pixels)
+ 0.5 px Gaussian noise; attention weights are a softmax over L*P.

dtypes: in a float32 or float64 row both implementations get all inputs in that dtype. In a
float16/bfloat16 row the compiled operator gets value in that dtype and sampling locations and
attention weights in float32 (what a model under AMP passes it; its dtype contract, docs/ops.md)
and accumulates in float32, on CPU and CUDA alike (`compute_dtype` float32); the reference gets
all three in the row's dtype (grid_sample needs one dtype). Each row records the dtypes its
implementation got (`input_dtypes`). `max_abs_diff_vs_reference` on a native row compares with
the reference run in the native row's compute dtype on the native's own inputs.

Floor: the time to move the bytes that any implementation must move at the peak memory
bandwidth (`--peak-bandwidth`, else a table of known GPUs, else a measured device-to-device
copy), from the dtypes of each row's inputs; `fraction_of_floor` = floor / measured (1.0 = at
the bandwidth limit). The formula is printed and stored in the JSON (`floor_formula`).

Examples:
  python tools/benchmark_ops.py --device cpu --threads 2 --shapes E1,D1,E2 --out benchmarks/ops_cpu.json
  python tools/benchmark_ops.py --device cuda --dtypes float32,float16,bfloat16 \
      --shapes E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48 --out benchmarks/ops_cuda.json
"""
import argparse
import dataclasses
import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detrex_lite.utils import json_io  # noqa: E402
from detrex_lite.layers.ms_deform_attn_function import (  # noqa: E402
    extension_available,
    extension_info,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

E1_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))


@dataclasses.dataclass(frozen=True)
class OpShape:
    batch: int
    levels: Tuple[Tuple[int, int], ...]
    num_queries: Optional[int] = None  # None: encoder, one query per value position (Lq = S)
    num_heads: int = 8
    head_dim: int = 32
    num_points: int = 4
    locations: str = "realistic"  # or "uniform"
    extra_out_of_bounds: Optional[float] = None  # this fraction of all samples moved outside the maps


SHAPES = {
    "E1": OpShape(2, E1_LEVELS),
    "E2": OpShape(1, ((100, 150), (50, 75), (25, 38), (13, 19))),
    "E3": OpShape(8, ((128, 128), (64, 64), (32, 32), (16, 16))),
    "D1": OpShape(2, E1_LEVELS, num_queries=300),
    "D2": OpShape(2, E1_LEVELS, num_queries=900),
    "R_uniform": OpShape(2, E1_LEVELS, locations="uniform"),
    "R_oob10": OpShape(2, E1_LEVELS, extra_out_of_bounds=0.1),
    "R_D64": OpShape(2, E1_LEVELS, head_dim=64),
    "R_P8": OpShape(2, E1_LEVELS, num_points=8),
    "R_D48": OpShape(2, E1_LEVELS, head_dim=48),
    "tiny": OpShape(1, ((8, 12), (4, 6), (2, 3), (1, 2))),
}
ALL_GPU_SHAPES = "E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Peak DRAM bandwidth (GB/s, 1e9 bytes) from the vendors' data sheets, matched by substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
KNOWN_BANDWIDTH_GBPS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB, SXM4 and PCIe
    ("L40S", 864.0),
    ("A10G", 600.0),
    ("V100", 900.0),
)

FLOOR_FORMULA = {
    "forward_bytes": "e * (N*Lq*M*D + R*D) + s * N*Lq*M*L*P",
    "backward_bytes": "e * (N*Lq*M*D + R*D + N*S*M*D) + 2 * s * N*Lq*M*L*P",
    "forward_backward_bytes": "forward_bytes + backward_bytes",
    "floor_ms": "bytes / (peak_bandwidth_GBps * 1e9) * 1e3",
    "fraction_of_floor": "floor_ms / measured_ms",
    "symbols": (
        "e = bytes per element of value (and of the output, grad_output and grad_value); "
        "s = bytes per sample = 2 * (bytes per location coordinate) + (bytes per weight), "
        "3 * e when all inputs share value's dtype; N batch, Lq queries, M heads, L levels, "
        "P points, D channels per head, S = sum(H_l*W_l); "
        "R = distinct (n, m, value position) rows that a bilinear corner inside the map lands on "
        "(R <= N*S*M; each read once). Forward: read locations, weights and the R value rows, "
        "write the output. Backward: read grad_output, locations, weights and the R value rows, "
        "write grad_locations and grad_weights, and write all of grad_value (N*S*M*D: rows no "
        "sample touches are zeros that must still be written)."
    ),
}


def _level_offsets(levels):
    areas = torch.tensor([h * w for h, w in levels], dtype=torch.int64)
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]]), int(areas.sum())


def out_of_bounds_mask(locations, levels):
    """(N, Lq, M, L, P) bool: True where all four bilinear corners of a sample lie outside its map,
    i.e. grid_sample (zeros padding, align_corners=False) returns 0 for it."""
    masks = []
    for lvl, (h, w) in enumerate(levels):
        x = locations[:, :, :, lvl, :, 0].double() * w - 0.5
        y = locations[:, :, :, lvl, :, 1].double() * h - 0.5
        masks.append((x <= -1) | (x >= w) | (y <= -1) | (y >= h))
    return torch.stack(masks, dim=3)


def make_inputs(name, device, dtype, seed=0):
    """value (N,S,M,D), spatial_shapes (L,2), level_start_index (L,), sampling_locations
    (N,Lq,M,L,P,2) normalised (x, y), attention_weights (N,Lq,M,L,P)."""
    shape = SHAPES[name]
    levels, heads, points = shape.levels, shape.num_heads, shape.num_points
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    level_start_index, num_value = _level_offsets(levels)
    num_levels = len(levels)
    if shape.num_queries is None:  # encoder: one query per pixel, at the pixel centre
        refs = []
        for h, w in levels:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            refs.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        ref = torch.cat(refs).expand(shape.batch, -1, -1)
    else:  # decoder: learned reference points, spread over the image
        ref = torch.rand(shape.batch, shape.num_queries, 2, generator=g)
    num_queries = ref.shape[1]
    sample_shape = (shape.batch, num_queries, heads, num_levels, points, 2)
    if shape.locations == "uniform":
        locations = torch.rand(sample_shape, generator=g)
    else:
        # The module's initial offsets: a ring of directions, point k at distance k + 1 pixels.
        angles = torch.arange(heads) * (2 * math.pi / heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        offsets = ring[:, None, None, :] * torch.arange(1, points + 1).view(1, 1, -1, 1)  # (M, 1, P, 2)
        offsets = offsets + 0.5 * torch.randn(sample_shape, generator=g)
        normalizer = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32)  # (L, 2) as (x, y)
        locations = ref[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    if shape.extra_out_of_bounds is not None:
        locations = _push_out_of_bounds(locations, levels, shape.extra_out_of_bounds, g)
    weights = torch.randn(shape.batch, num_queries, heads, num_levels * points, generator=g).softmax(-1)
    weights = weights.view(shape.batch, num_queries, heads, num_levels, points)
    value = torch.randn(shape.batch, num_value, heads, shape.head_dim, generator=g)
    to = dict(device=device, dtype=dtype)
    return (
        value.to(**to), spatial_shapes.to(device), level_start_index.to(device),
        locations.to(**to), weights.to(**to),
    )


def _push_out_of_bounds(locations, levels, fraction, generator):
    """Moves `fraction` of all samples, chosen at random among those inside the maps, outside
    every map (x in [-1.5, -1] or [2, 2.5]: no bilinear corner is inside for any map size)."""
    outside = out_of_bounds_mask(locations, levels).flatten()
    wanted = round(fraction * outside.numel())
    inside = (~outside).nonzero().squeeze(1)
    chosen = inside[torch.randperm(inside.numel(), generator=generator)[:wanted]]
    u = torch.rand(wanted, generator=generator)
    x = torch.where(torch.rand(wanted, generator=generator) < 0.5, -1.0 - 0.5 * u, 2.0 + 0.5 * u)
    flat = locations.reshape(-1, 2).clone()
    flat[chosen, 0] = x
    return flat.view_as(locations)


def touched_value_rows(value, spatial_shapes, level_start_index, locations):
    """R: the number of distinct (n, m, s) value rows that some in-map bilinear corner reads."""
    n, s, m, _ = value.shape
    touched = torch.zeros(n * s * m, dtype=torch.bool, device=value.device)
    batch_idx = torch.arange(n, device=value.device).view(n, 1, 1, 1)
    head_idx = torch.arange(m, device=value.device).view(1, 1, m, 1)
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        start = int(level_start_index[lvl])
        x = locations[:, :, :, lvl, :, 0].double() * w - 0.5  # (N, Lq, M, P)
        y = locations[:, :, :, lvl, :, 1].double() * h - 0.5
        x0, y0 = x.floor().long(), y.floor().long()
        for dx in (0, 1):
            for dy in (0, 1):
                xc, yc = x0 + dx, y0 + dy
                ok = (xc >= 0) & (xc < w) & (yc >= 0) & (yc < h)
                pos = start + yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)
                row = (batch_idx * s + pos) * m + head_idx
                touched[row[ok]] = True
    return int(touched.sum())


def bytes_moved(value, locations, touched_rows, weights=None):
    """Minimum bytes for forward and backward (FLOOR_FORMULA), in the inputs' dtypes (`weights`
    only for its dtype; without it the weights are taken to have the locations' dtype). The
    location and weight gradients have their inputs' dtypes."""
    e = value.element_size()
    per_sample = 2 * locations.element_size() + (weights if weights is not None else locations).element_size()
    n, s, m, d = value.shape
    _, lq, _, l, p, _ = locations.shape
    samples = n * lq * m * l * p
    out = n * lq * m * d
    forward = e * (out + touched_rows * d) + per_sample * samples
    backward = e * (out + touched_rows * d + n * s * m * d) + 2 * per_sample * samples
    return {"forward": forward, "backward": backward, "forward_backward": forward + backward}


def input_dtypes(impl, dtype):
    """dtypes of (value, sampling_locations, attention_weights) that `impl` gets in a `dtype` row:
    the native operator takes float32 locations and weights next to a 16-bit value, as a model
    under AMP passes them; the reference (grid_sample) needs one dtype."""
    sample_dtype = torch.float32 if impl == "native" and dtype in (torch.float16, torch.bfloat16) else dtype
    return {"value": dtype, "sampling_locations": sample_dtype, "attention_weights": sample_dtype}


def cast_inputs(inputs, dtypes):
    """`inputs` (make_inputs' tuple) with value, locations and weights cast to `dtypes`."""
    value, spatial_shapes, level_start_index, locations, weights = inputs
    return (
        value.to(dtypes["value"]), spatial_shapes, level_start_index,
        locations.to(dtypes["sampling_locations"]), weights.to(dtypes["attention_weights"]),
    )


def native(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, 64)


def reference(value, spatial_shapes, level_start_index, locations, weights):
    return ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)


def _timed(fn, device):
    """Milliseconds of one fn() call (CUDA events on GPU)."""
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


CUDA_KERNEL_ENV = "DETREX_LITE_MSDA_CUDA_KERNEL"  # read by the CUDA operator at every call
CUDA_KERNELS = ("auto", "generic", "scalar", "index64")


def with_cuda_kernel(fn, kernel):
    """`fn` run with the CUDA operator forced to one kernel instance (see
    csrc/cuda/ms_deform_attn_kernels.cuh, KernelChoice). Every native closure is wrapped, "auto"
    included, so that all native rows pay the same few microseconds of setting it."""

    def run():
        previous = os.environ.get(CUDA_KERNEL_ENV)
        os.environ[CUDA_KERNEL_ENV] = kernel
        try:
            fn()
        finally:
            if previous is None:
                del os.environ[CUDA_KERNEL_ENV]
            else:
                os.environ[CUDA_KERNEL_ENV] = previous

    return run


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


def known_bandwidth(device_name):
    """(GB/s, matched key) from KNOWN_BANDWIDTH_GBPS, or None for a device not in the table."""
    for key, gbps in KNOWN_BANDWIDTH_GBPS:
        if key in device_name:
            return gbps, key
    return None


def peak_bandwidth(device, override=None):
    """(GB/s, source, measured copy GB/s): `override`, else the table for a known GPU, else a
    measured copy (bytes read + bytes written per second of a large tensor copy)."""
    measured = measure_copy_bandwidth(device)
    if override:
        return float(override), "argument", measured
    known = known_bandwidth(torch.cuda.get_device_name()) if device == "cuda" else None
    if known:
        return known[0], f"table ({known[1]})", measured
    return measured, "measured copy", measured


def measure_copy_bandwidth(device, mbytes=None, repeats=None):
    mbytes = mbytes or (1024 if device == "cuda" else 64)
    repeats = repeats or (20 if device == "cuda" else 5)
    src = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_interleaved([lambda: dst.copy_(src)], device, 3, repeats)[0]
    del src, dst
    return round(2 * mbytes * 2**20 / (ms * 1e-3) / 1e9, 1)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _shape_info(name, inputs, touched_rows):
    shape = SHAPES[name]
    value, _, _, locations, _ = inputs
    oob = out_of_bounds_mask(locations, shape.levels)
    return dict(
        batch=shape.batch, levels=[list(x) for x in shape.levels], num_queries=shape.num_queries or "S",
        num_value=value.shape[1], lq=locations.shape[1], num_heads=shape.num_heads, head_dim=shape.head_dim,
        num_points=shape.num_points, locations=shape.locations,
        out_of_bounds_fraction=round(float(oob.float().mean()), 4),
        touched_value_rows=touched_rows, value_rows=value.shape[0] * value.shape[1] * value.shape[2],
    )


def measure(name, dtype_name, device, bandwidth, warmup, repeats, cuda_kernels=("auto",)):
    """Times both implementations on one shape and dtype; prints and returns
    (the shape's facts, [reference row, native row(s)]). On CUDA, `cuda_kernels` names the kernel
    instances to time (one native row each, `native[<kernel>]` for all but "auto")."""
    dtype = DTYPES[dtype_name]
    base = make_inputs(name, device, torch.float32)  # the same numbers in every dtype
    impls = ("reference", "native")
    dtypes = {impl: input_dtypes(impl, dtype) for impl in impls}
    inputs = {impl: cast_inputs(base, dtypes[impl]) for impl in impls}
    del base
    touched, nbytes = {}, {}
    for impl in impls:
        value, shapes, starts, locations, weights = inputs[impl]
        if impl == "native" and locations is inputs["reference"][3]:
            touched[impl] = touched["reference"]  # the same locations touch the same rows
        else:
            touched[impl] = touched_value_rows(value, shapes, starts, locations)
        nbytes[impl] = bytes_moved(value, locations, touched[impl], weights)
    info = _shape_info(name, inputs["native"], touched["native"])
    compute_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    with torch.no_grad():
        value, shapes, starts, locations, weights = inputs["native"]
        expected = reference(value.to(compute_dtype), shapes, starts, locations.to(compute_dtype),
                             weights.to(compute_dtype))
        max_diff = (native(*inputs["native"]).to(compute_dtype) - expected).abs().max().item()
        del expected
    ref_f, ref_b = make_closures(reference, inputs["reference"])
    nat_f, nat_b = make_closures(native, inputs["native"])
    # (row label, implementation, CUDA kernel instance or None, forward, forward + backward)
    runs = [("reference", "reference", None, ref_f, ref_b)]
    if device == "cuda":
        for kernel in cuda_kernels:
            label = "native" if kernel == "auto" else f"native[{kernel}]"
            runs.append((label, "native", kernel, with_cuda_kernel(nat_f, kernel), with_cuda_kernel(nat_b, kernel)))
    else:
        runs.append(("native", "native", None, nat_f, nat_b))
    fwd_ms = time_interleaved([run[3] for run in runs], device, warmup, repeats)
    fb_ms = time_interleaved([run[4] for run in runs], device, warmup, repeats)
    ref_fwd, ref_fb = fwd_ms[0], fb_ms[0]
    rows = []
    for (label, impl, kernel, _, _), fwd, fb in zip(runs, fwd_ms, fb_ms):
        floor_fwd = nbytes[impl]["forward"] / (bandwidth * 1e9) * 1e3
        floor_fb = nbytes[impl]["forward_backward"] / (bandwidth * 1e9) * 1e3
        row = dict(
            shape=name, dtype=dtype_name, impl=label,
            input_dtypes={k: _dtype_name(v) for k, v in dtypes[impl].items()},
            compute_dtype=_dtype_name(compute_dtype if impl == "native" else dtype),
            forward_ms=round(fwd, 4), forward_backward_ms=round(fb, 4),
            forward_speedup=round(ref_fwd / fwd, 2), forward_backward_speedup=round(ref_fb / fb, 2),
            forward_bytes=nbytes[impl]["forward"], forward_backward_bytes=nbytes[impl]["forward_backward"],
            forward_floor_ms=round(floor_fwd, 4), forward_backward_floor_ms=round(floor_fb, 4),
            forward_fraction_of_floor=round(floor_fwd / fwd, 4),
            forward_backward_fraction_of_floor=round(floor_fb / fb, 4),
        )
        if impl == "native":
            row["max_abs_diff_vs_reference"] = max_diff
            if kernel is not None:
                row["cuda_kernel"] = kernel
        rows.append(row)
        print(f"{name:<9} {dtype_name:<9} {label:<10} {row['compute_dtype']:<8} {fwd:>9.3f} {fb:>10.3f} "
              f"{row['forward_speedup']:>6.2f} {row['forward_backward_speedup']:>6.2f} "
              f"{floor_fwd:>9.4f} {floor_fb:>9.4f} {100 * floor_fwd / fwd:>6.1f}% {100 * floor_fb / fb:>6.1f}%")
    return info, rows


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _result(args, device_name, repeats, warmup, bandwidth, bandwidth_source, copy_gbps, shapes_info, rows):
    return dict(
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
        statistic="median",
        timer="cuda events" if args.device == "cuda" else "time.perf_counter",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        extension=extension_info(),
        peak_bandwidth_GBps=bandwidth,
        bandwidth_source=bandwidth_source,
        measured_copy_GBps=copy_gbps,
        floor_formula=FLOOR_FORMULA,
        shapes=shapes_info,
        results=rows,
    )


def _write_json(path, result):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json_io.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32,float64,float16,bfloat16")
    parser.add_argument("--shapes", default="E1,D1", help=f"comma-separated from {','.join(SHAPES)}; 'all' = {ALL_GPU_SHAPES}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default: 5 on CPU, 100 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 1 CPU, 10 CUDA)")
    parser.add_argument("--peak-bandwidth", type=float, default=None, metavar="GBps",
                        help="peak memory bandwidth for the floor (default: known GPU table, else a measured copy)")
    parser.add_argument("--cuda-kernels", default="auto",
                        help=f"CUDA only, comma-separated from {','.join(CUDA_KERNELS)}: time these kernel "
                             "instances side by side (auto = what the operator picks; the others force the "
                             "generic L/P loop, 1-element packs, 64-bit indices)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    cuda_kernels = tuple(args.cuda_kernels.split(","))
    for kernel in cuda_kernels:
        if kernel not in CUDA_KERNELS:
            parser.error(f"--cuda-kernels: unknown kernel {kernel!r}; expected names from {', '.join(CUDA_KERNELS)}")
    if args.device != "cuda" and cuda_kernels != ("auto",):
        parser.error("--cuda-kernels needs --device cuda")

    names = ALL_GPU_SHAPES.split(",") if args.shapes == "all" else args.shapes.split(",")
    for name in names:
        if name not in SHAPES:
            parser.error(f"--shapes: unknown shape {name!r}; expected names from {', '.join(SHAPES)}")
    dtype_names = args.dtypes.split(",")
    for dtype_name in dtype_names:
        if dtype_name not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {dtype_name!r}; expected {', '.join(DTYPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (100 if args.device == "cuda" else 5)
    warmup = args.warmup if args.warmup is not None else (10 if args.device == "cuda" else 1)
    if args.device == "cuda" and repeats < 100:
        print(f"note: {repeats} repeats; the issue's protocol asks for >= 100 on GPU", file=sys.stderr)
    if not extension_available(args.device):
        print(f"warning: no compiled operator for {args.device}; 'native' below is the fallback", file=sys.stderr)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    bandwidth, bandwidth_source, copy_gbps = peak_bandwidth(args.device, args.peak_bandwidth)
    print(f"device: {device_name}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"threads {torch.get_num_threads()}; repeats {repeats} (median) after {warmup} warm-up")
    print(f"peak bandwidth {bandwidth:.0f} GB/s ({bandwidth_source}; measured copy {copy_gbps:.0f} GB/s)")
    print("floor: " + "; ".join(f"{k} = {v}" for k, v in FLOOR_FORMULA.items() if k != "symbols"))
    print(f"       {FLOOR_FORMULA['symbols']}")
    if any(DTYPES[d] in (torch.float16, torch.bfloat16) for d in dtype_names):
        print("float16/bfloat16 rows: native gets value in that dtype and locations + weights in float32; "
              "reference gets all three in that dtype")
    header = (f"{'shape':<9} {'dtype':<9} {'impl':<10} {'compute':<8} {'fwd ms':>9} {'fwd+bwd ms':>10} "
              f"{'fwd x':>6} {'f+b x':>6} {'floor fwd':>9} {'floor f+b':>9} {'fwd %fl':>7} {'f+b %fl':>7}")
    print(header)
    print("-" * len(header))
    rows, shapes_info = [], {}
    for name in names:
        for dtype_name in dtype_names:
            info, new_rows = measure(name, dtype_name, args.device, bandwidth, warmup, repeats, cuda_kernels)
            shapes_info.setdefault(name, info)
            rows.extend(new_rows)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            # Written after every shape and dtype, so that a run stopped by a time limit keeps
            # what it measured.
            result = _result(args, device_name, repeats, warmup, bandwidth, bandwidth_source, copy_gbps,
                             shapes_info, rows)
            if args.out:
                _write_json(args.out, result)
    if args.out:
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
