"""Checks the multi-scale deformable attention implementations on this machine.

    python -m detrex_lite.selftest [--quick]

For each device present (CPU, CUDA), each available implementation (the compiled operator, the
PyTorch reference) and each dtype, runs forward and backward on random inputs and compares them
with the reference computed in float64. Prints what was built and a table; exits non-zero when a
comparison fails.
"""
import argparse
import sys

import torch

from detrex_lite.layers.ms_deform_attn_function import (
    extension_available,
    extension_info,
    ms_deform_attn,
    ms_deform_attn_pytorch,
)

# Allowed max abs error (forward, backward) relative to max(1, |reference|), per dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-2, 3e-2),
    torch.bfloat16: (3e-2, 1e-1),
}


def _inputs(device, quick, seed=0):
    g = torch.Generator().manual_seed(seed)
    levels = ((8, 10), (4, 5), (2, 3), (1, 1)) if quick else ((32, 40), (16, 20), (8, 10), (4, 5))
    batch, queries, heads, channels, points = (2, 20, 4, 8, 3) if quick else (3, 300, 8, 32, 4)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=g, dtype=torch.float64)
    loc = torch.rand(batch, queries, heads, len(levels), points, 2, generator=g, dtype=torch.float64) * 1.1 - 0.05
    attn = torch.rand(batch, queries, heads, len(levels), points, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, queries, heads * channels, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (value, spatial_shapes, level_start_index, loc, attn, grad)]


def _run(impl, value, shapes, starts, loc, attn, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    if impl == "native":
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    else:
        out = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
    grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out, grads


def check(device, dtype, impl, quick):
    value, shapes, starts, loc, attn, grad = _inputs(device, quick)
    rounded = [t.to(dtype) for t in (value, loc, attn)]
    out, grads = _run(impl, rounded[0], shapes, starts, rounded[1], rounded[2], grad)
    # The float64 reference on the same (rounded) inputs.
    ref, ref_grads = _run("reference", *(t.double() for t in rounded[:1]), shapes, starts,
                          *(t.double() for t in rounded[1:]), grad)
    fwd_err = ((out.double() - ref).abs().max() / max(1.0, ref.abs().max().item())).item()
    # d out / d location jumps where a pixel coordinate crosses an integer (the bilinear cell
    # changes), so a coordinate within rounding distance of one may land in either cell:
    # those entries are left out of the location-gradient comparison.
    wh = shapes.flip(-1).to(torch.float64)  # (L, 2) as (W, H)
    pixel = rounded[1].double() * wh[None, None, None, :, None, :] - 0.5
    on_seam = (pixel - pixel.round()).abs() < 1e-3
    keep = [torch.ones_like(ref_grads[0], dtype=torch.bool), ~on_seam, torch.ones_like(ref_grads[2], dtype=torch.bool)]
    bwd_err = max(
        (((g.double() - r).abs() * k).max() / max(1.0, r.abs().max().item())).item()
        for g, r, k in zip(grads, ref_grads, keep)
    )
    fwd_tol, bwd_tol = TOLERANCES[dtype]
    return fwd_err, bwd_err, fwd_err <= fwd_tol and bwd_err <= bwd_tol


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    args = parser.parse_args(argv)

    info = extension_info()
    print(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
          f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"detrex_lite._C built: {info['built']}; with CUDA: {info['with_cuda']}; "
          f"architectures: {', '.join(info['cuda_archs']) or '-'}")

    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dtypes = [torch.float64, torch.float32]
        if device == "cuda":
            dtypes += [torch.float16, torch.bfloat16]
        impls = ["reference"] + (["native"] if extension_available(device) else [])
        for impl in impls:
            for dtype in dtypes:
                try:
                    fwd, bwd, ok = check(device, dtype, impl, args.quick)
                    rows.append((device, str(dtype).replace("torch.", ""), impl, f"{fwd:.2e}", f"{bwd:.2e}",
                                 "PASS" if ok else "FAIL"))
                except Exception as e:  # a crash is a failure; report it in the table
                    rows.append((device, str(dtype).replace("torch.", ""), impl, "-", "-", f"FAIL ({e})"))
    header = ("device", "dtype", "impl", "fwd err", "bwd err", "result")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    failed = [r for r in rows if not r[-1].startswith("PASS")]
    if not extension_available("cpu"):
        print("note: the compiled operator is not built; only the PyTorch reference was checked")
    print("selftest:", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
