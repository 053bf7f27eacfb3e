"""Checks the multi-scale deformable attention implementations on this machine.

    python -m detrex_lite.selftest [--quick]
    python -m detrex_lite.selftest --smoke [--device cuda] [--no-sync-check]

For each device present (CPU, CUDA), each available implementation (the compiled operator, the
PyTorch reference), each dtype combination of the contract and each case (the model's kernel
instance L = 4, P = 4, D = 32, M = 8; D = 48; D = 64; a misaligned value view), and on CUDA each
kernel instance (the operator's ``kernel`` argument: auto, generic, scalar, index64), runs forward and
backward on random inputs and compares them with the reference computed in float64. Prints what
was built and a table; exits non-zero when a comparison fails.

``--smoke`` (tools/gpu_check.sh step 3, and the case compute-sanitizer runs) checks only the
model's instance in float32 and bfloat16, with the layout on the CPU and on the device and
through :class:`~detrex_lite.layers.LevelLayout` (the model's path), an out-of-range layout, and
on CUDA the host synchronisations of the model's path.
"""
import argparse
import sys
import warnings
from typing import List

import torch

from detrex_lite.layers.level_layout import LevelLayout
from detrex_lite.layers.ms_deform_attn_function import CUDA_KERNELS as MSDA_CUDA_KERNELS
from detrex_lite.layers.ms_deform_attn_function import (
    extension_available,
    extension_info,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    ms_deform_attn_with_layout,
)

# Allowed max abs error (forward, backward) relative to max(1, |reference|), per value dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-2, 3e-2),
    torch.bfloat16: (3e-2, 1e-1),
}

# (value dtype, locations/weights dtype): every combination of the dtype contract.
DTYPES = [
    (torch.float64, torch.float64),
    (torch.float32, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
]

# The model's kernel instance (L = 4, P = 4, D = 32, M = 8) and its neighbours. "misaligned":
# value and grad_output are views starting one element into their buffers (buf[1:]).
CASES = {
    "L4P4_D32_M8": dict(channels=32),
    "D48": dict(channels=48),
    "D64": dict(channels=64),
    "misaligned": dict(channels=32, misalign=True),
}

# CUDA kernel instances (the operator's ``kernel`` argument); "auto" is what the model uses.
CUDA_KERNELS = list(MSDA_CUDA_KERNELS)


def _inputs(device, quick, channels, misalign=False, seed=0):
    """Random inputs with 4 levels, 4 points and 8 heads; quick: 2 x 40 queries (several CUDA
    blocks in every instance), else 3 x 300 on larger maps."""
    g = torch.Generator().manual_seed(seed)
    levels = ((8, 10), (4, 5), (2, 3), (1, 1)) if quick else ((32, 40), (16, 20), (8, 10), (4, 5))
    batch, queries, heads, points = (2, 40, 8, 4) if quick else (3, 300, 8, 4)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=g, dtype=torch.float64)
    loc = torch.rand(batch, queries, heads, len(levels), points, 2, generator=g, dtype=torch.float64) * 1.1 - 0.05
    attn = torch.rand(batch, queries, heads, len(levels), points, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, queries, heads * channels, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, loc, attn, grad)]


def _shifted(t: torch.Tensor, misalign: bool) -> torch.Tensor:
    """``t``, or a copy that starts one element into a larger buffer (not 16-byte aligned)."""
    if not misalign:
        return t
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def _run(impl, value, shapes, starts, loc, attn, grad, misalign=False, kernel="auto"):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    if impl in ("native", "layout"):
        v = _shifted(leaves[0], misalign)
        if impl == "native":
            out = ms_deform_attn(v, shapes, starts, leaves[1], leaves[2], kernel=kernel)
        else:
            layout = LevelLayout.from_sizes([tuple(hw) for hw in shapes.tolist()], v.device)
            out = ms_deform_attn_with_layout(v, layout, leaves[1], leaves[2], backend="compiled", kernel=kernel)
        grads = torch.autograd.grad(out, leaves, _shifted(grad.to(out.dtype), misalign))
    else:
        out = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out, grads


def check(device, dtypes, impl, quick, case="L4P4_D32_M8", layout_device=None, kernel="auto"):
    """(forward error, backward error, passed) of ``impl`` against the float64 reference.
    ``layout_device``: where spatial_shapes / level_start_index live (default: ``device``; "cpu"
    next to CUDA values is what the model passes). ``impl`` "layout": the model's path, a
    :class:`LevelLayout` built from host-side sizes and :func:`ms_deform_attn_with_layout`.
    ``kernel``: the CUDA kernel instance (ignored on the CPU)."""
    value_dtype, sample_dtype = dtypes
    spec = dict(CASES[case])
    misalign = spec.pop("misalign", False)
    value, shapes, starts, loc, attn, grad = _inputs(device, quick, **spec)
    if layout_device is not None:
        shapes, starts = shapes.to(layout_device), starts.to(layout_device)
    rounded = [value.to(value_dtype), loc.to(sample_dtype), attn.to(sample_dtype)]
    out, grads = _run(impl, rounded[0], shapes, starts, rounded[1], rounded[2], grad, misalign, kernel)
    # The float64 reference on the same (rounded) inputs.
    ref, ref_grads = _run("reference", *(t.double() for t in rounded[:1]), shapes, starts,
                          *(t.double() for t in rounded[1:]), grad)
    fwd_err = ((out.double() - ref).abs().max() / max(1.0, ref.abs().max().item())).item()
    # d out / d location jumps where a pixel coordinate crosses an integer (the bilinear cell
    # changes), so a coordinate within rounding distance of one may land in either cell:
    # those entries are left out of the location-gradient comparison.
    wh = shapes.flip(-1).to(device=rounded[1].device, dtype=torch.float64)  # (L, 2) as (W, H)
    pixel = rounded[1].double() * wh[None, None, None, :, None, :] - 0.5
    on_seam = (pixel - pixel.round()).abs() < 1e-3
    keep = [torch.ones_like(ref_grads[0], dtype=torch.bool), ~on_seam, torch.ones_like(ref_grads[2], dtype=torch.bool)]
    bwd_err = max(
        (((g.double() - r).abs() * k).max() / max(1.0, r.abs().max().item())).item()
        for g, r, k in zip(grads, ref_grads, keep)
    )
    fwd_tol, bwd_tol = TOLERANCES[value_dtype]
    return fwd_err, bwd_err, fwd_err <= fwd_tol and bwd_err <= bwd_tol


def _dtype_name(dtypes) -> str:
    value_dtype, sample_dtype = (str(d).replace("torch.", "") for d in dtypes)
    return value_dtype if value_dtype == sample_dtype else f"{value_dtype}+{sample_dtype} loc"


def _plan(device: str, extension=None) -> list:
    """(case, kernel, dtypes, impl) rows to run on ``device`` (with ``extension``, by default the
    compiled operator this process loaded)."""
    rows = []
    native = extension_available(device, extension)
    kernels = CUDA_KERNELS if device == "cuda" else ["-"]
    for case in CASES:
        for dtypes in DTYPES:
            # The reference (grid_sample) needs one dtype, and in 16 bits it accumulates its
            # gradients in 16 bits (errors of 10%): it is checked in float64 and float32.
            if dtypes[0] == dtypes[1] and dtypes[0] in (torch.float64, torch.float32) and not CASES[case].get("misalign"):
                rows.append((case, "-", dtypes, "reference"))
            if native:
                rows += [(case, kernel, dtypes, "native") for kernel in kernels]
    return rows


# The smoke test (tools/gpu_check.sh step 3, and the case compute-sanitizer runs): the model's
# kernel instance in float32 and bfloat16 (float32 locations, what the model passes under
# autocast), small enough to run under the sanitizer.
SMOKE_DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)]


def _model_path_syncs(device: str) -> List[str]:
    """The host synchronisations that ``torch.cuda.set_sync_debug_mode("warn")`` reports during
    one forward + backward of the model's path: a :class:`LevelLayout` built from host-side
    sizes, then :func:`ms_deform_attn_with_layout` (the compiled op). Each is a first line of
    the warning; the model's path should have none."""
    value, shapes, _, loc, attn, grad = _inputs(device, True, channels=32)
    sizes = [tuple(hw) for hw in shapes.tolist()]
    leaves = [t.float().requires_grad_() for t in (value, loc, attn)]
    grad = grad.float()
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            layout = LevelLayout.from_sizes(sizes, torch.device(device))
            out = ms_deform_attn_with_layout(leaves[0], layout, leaves[1], leaves[2], backend="compiled")
            torch.autograd.grad(out, leaves, grad)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]


def _bad_layout_refused(device: str, layout_device: str) -> str:
    """The raw operator on a layout whose level 1 lies outside value: "" when it raises (host
    check for a CPU layout, the kernels' bounds flag for a GPU one), else what went wrong."""
    value, _, starts, loc, attn, _ = _inputs(device, True, channels=32)
    bad = torch.tensor([[8, 10], [400, 500], [2, 3], [1, 1]], dtype=torch.int64, device=layout_device)
    try:
        torch.ops.detrex_lite.ms_deform_attn_forward(
            value.float(), bad, starts.to(layout_device), loc.float(), attn.float(), 64
        )
    except RuntimeError:
        return ""
    return "an out-of-range layout was accepted"


def smoke(device: str, sync_check: bool = True) -> List[tuple]:
    """Rows (path, layout, dtype, fwd err, bwd err, result) of the smoke test on ``device``:
    the raw operator with the layout on the CPU and on ``device``, the model's path
    (:class:`LevelLayout`), an out-of-range layout refused, and (CUDA, ``sync_check``) the
    model's path free of host synchronisations."""
    rows = []
    layouts = ["cpu"] if device == "cpu" else ["cpu", device]
    for dtypes in SMOKE_DTYPES:
        for path, layout_device in [("raw op", d) for d in layouts] + [("model (LevelLayout)", device)]:
            impl = "native" if path == "raw op" else "layout"
            try:
                fwd, bwd, ok = check(device, dtypes, impl, True, layout_device=layout_device)
                rows.append((path, layout_device, _dtype_name(dtypes), f"{fwd:.2e}", f"{bwd:.2e}", "PASS" if ok else "FAIL"))
            except Exception as e:  # a crash is a failure; report it in the table
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                rows.append((path, layout_device, _dtype_name(dtypes), "-", "-", f"FAIL ({message})"))
    for layout_device in layouts:
        problem = _bad_layout_refused(device, layout_device)
        rows.append(("out-of-range layout", layout_device, "float32", "-", "-", f"FAIL ({problem})" if problem else "PASS"))
    if device != "cpu" and sync_check:
        syncs = _model_path_syncs(device)
        result = "PASS" if not syncs else f"FAIL ({len(syncs)}: {syncs[0]})"
        rows.append(("host syncs, model path", "-", "float32", "-", "-", result))
    return rows


def _print_table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument(
        "--smoke", action="store_true",
        help="only the smoke test (tools/gpu_check.sh): the model's instance in float32 and bfloat16, CPU- and "
             "device-resident layouts, an out-of-range layout, host synchronisations of the model's path",
    )
    parser.add_argument("--device", default=None, help="the smoke test's device (default: cuda when present)")
    parser.add_argument("--no-sync-check", action="store_true", help="smoke test without the synchronisation count")
    args = parser.parse_args(argv)

    if args.smoke:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        print(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, extension {extension_info()}")
        if not extension_available(torch.device(device).type):
            print(f"smoke: FAILED (detrex_lite._C has no kernel for {device})")
            return 1
        rows = smoke(device, sync_check=not args.no_sync_check)
        _print_table(("path", "layout", "dtype", "fwd err", "bwd err", "result"), rows)
        failed = [r for r in rows if not r[-1].startswith("PASS")]
        print(f"smoke: {'FAILED' if failed else 'passed'} ({len(rows) - len(failed)}/{len(rows)} rows passed on {device})")
        return 1 if failed else 0

    info = extension_info()
    print(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"detrex_lite._C built: {info['built']}; with CUDA: {info['with_cuda']}; "
          f"architectures: {', '.join(info['cuda_archs']) or '-'}")

    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for case, kernel, dtypes, impl in _plan(device):
            try:
                fwd, bwd, ok = check(device, dtypes, impl, args.quick, case, kernel="auto" if kernel == "-" else kernel)
                rows.append((device, case, kernel, _dtype_name(dtypes), impl, f"{fwd:.2e}", f"{bwd:.2e}",
                             "PASS" if ok else "FAIL"))
            except Exception as e:  # a crash is a failure; report it in the table
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                rows.append((device, case, kernel, _dtype_name(dtypes), impl, "-", "-", f"FAIL ({message})"))
    _print_table(("device", "case", "kernel", "dtype", "impl", "fwd err", "bwd err", "result"), rows)
    failed = [r for r in rows if not r[-1].startswith("PASS")]
    if not extension_available("cpu"):
        print("note: the compiled operator is not built; only the PyTorch reference was checked")
    print(f"selftest: {'FAILED' if failed else 'passed'} ({len(rows) - len(failed)}/{len(rows)} rows passed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
