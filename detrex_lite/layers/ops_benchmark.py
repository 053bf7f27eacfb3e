"""Times multi-scale deformable attention: the compiled operator vs the PyTorch reference, and
compares both with a floor computed from the bytes that must move (tools/benchmark_ops.py is its
command line; docs/ops.md, "Operator benchmark", explains the shapes, dtypes, floor and JSON)."""
import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from typing import Optional

import torch

from detrex_lite.layers.ms_deform_attn_function import (
    CUDA_KERNELS,
    extension_available,
    extension_info,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)
from detrex_lite.layers.ops_benchmark_inputs import (
    ALL_GPU_SHAPES,
    DTYPES,
    SHAPES,
    bytes_moved,
    cast_inputs,
    input_dtypes,
    make_inputs,
    out_of_bounds_mask,
    touched_value_rows,
)
from detrex_lite.utils import json_io

__all__ = ["CUDA_KERNELS", "FLOOR_FORMULA", "KNOWN_BANDWIDTH_GBPS", "known_bandwidth", "measure", "native", "reference",
           "run", "time_interleaved"]

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


def native(value, spatial_shapes, level_start_index, locations, weights, kernel="auto"):
    """The compiled operator (CUDA kernel instance ``kernel``: one of CUDA_KERNELS)."""
    return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, 64, kernel=kernel)


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


def _peak_bandwidth(device, override=None):
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
    if device == "cuda":  # one native row per kernel instance (the operator's `kernel` argument)
        for kernel in cuda_kernels:
            label = "native" if kernel == "auto" else f"native[{kernel}]"
            fwd, fwd_bwd = make_closures(functools.partial(native, kernel=kernel), inputs["native"])
            runs.append((label, "native", kernel, fwd, fwd_bwd))
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


def run(
    device: Optional[str] = None,
    dtypes: str = "float32",
    shapes: str = "E1,D1",
    threads: Optional[int] = None,
    repeats: Optional[int] = None,
    warmup: Optional[int] = None,
    peak_bandwidth: Optional[float] = None,
    cuda_kernels: str = "auto",
    out: Optional[str] = None,
) -> dict:
    """Times every shape x dtype (tools/benchmark_ops.py: the arguments are its flags, the
    comma-separated strings included), prints a table and returns the JSON result, also written
    to ``out`` after every shape and dtype.

    Raises:
        ValueError: an unknown shape, dtype or kernel name, or --cuda-kernels without CUDA.
    """
    args = argparse.Namespace(device=device or ("cuda" if torch.cuda.is_available() else "cpu"), out=out)
    kernels = tuple(cuda_kernels.split(","))
    for kernel in kernels:
        if kernel not in CUDA_KERNELS:
            raise ValueError(f"--cuda-kernels: unknown kernel {kernel!r}; expected names from {', '.join(CUDA_KERNELS)}")
    if args.device != "cuda" and kernels != ("auto",):
        raise ValueError("--cuda-kernels needs --device cuda")
    cuda_kernels = kernels

    names = ALL_GPU_SHAPES.split(",") if shapes == "all" else shapes.split(",")
    for name in names:
        if name not in SHAPES:
            raise ValueError(f"--shapes: unknown shape {name!r}; expected names from {', '.join(SHAPES)}")
    dtype_names = dtypes.split(",")
    for dtype_name in dtype_names:
        if dtype_name not in DTYPES:
            raise ValueError(f"--dtypes: unknown dtype {dtype_name!r}; expected {', '.join(DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    repeats = repeats or (100 if args.device == "cuda" else 5)
    warmup = warmup if warmup is not None else (10 if args.device == "cuda" else 1)
    if args.device == "cuda" and repeats < 100:
        print(f"note: {repeats} repeats; the issue's protocol asks for >= 100 on GPU", file=sys.stderr)
    if not extension_available(args.device):
        print(f"warning: no compiled operator for {args.device}; 'native' below is the fallback", file=sys.stderr)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    bandwidth, bandwidth_source, copy_gbps = _peak_bandwidth(args.device, peak_bandwidth)
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
