"""The CUDA kernels and their host code, run on the CPU by tests/cuda_emulation, against the
float64 grid_sample reference.

Each CUDA thread runs as an OS thread with real lockstep warp shuffles, and every memory access
is checked for bounds and alignment, so this covers the kernels' indexing, vector packs, lane
groups and reductions on machines without a GPU. What it cannot cover (timing, the GPU's
vector atomics on sm_90, real memory faults) is left to tests/test_ms_deform_attn_cuda.py on a GPU.
"""
import hashlib
import os
import sys

import pytest
import torch

from detrex_lite.data.demo_dataset import default_cache_root
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn_pytorch

from test_ms_deform_attn import make_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [
    os.path.join(ROOT, "tests", "cuda_emulation", "emulated_ops.cpp"),
    os.path.join(ROOT, "tests", "cuda_emulation", "emulated_device.h"),
    os.path.join(ROOT, "csrc", "cuda", "ms_deform_attn_kernels.cuh"),
    os.path.join(ROOT, "csrc", "cuda", "device_primitives.cuh"),
    os.path.join(ROOT, "csrc", "cuda", "pack.h"),
    os.path.join(ROOT, "csrc", "ms_deform_attn_layout.h"),
]


@pytest.fixture(scope="module")
def emulated():
    """Builds the emulated operator once per source version (25-60 s on 2 cores)."""
    from torch.utils import cpp_extension
    # A build per source version, torch and Python (the module links against both).
    key = b"".join(open(p, "rb").read() for p in SOURCES) + f"{torch.__version__} {sys.version}".encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    build_dir = os.path.join(default_cache_root(), "cuda_emulation", digest)
    os.makedirs(build_dir, exist_ok=True)
    # torch builds with ninja; the pip-installed one sits beside this interpreter.
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + path
    try:
        return cpp_extension.load(
            name=f"detrex_lite_cuda_emulation_{digest}",
            sources=[SOURCES[0]],
            extra_include_paths=[os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "csrc"),
                                 os.path.join(ROOT, "tests", "cuda_emulation")],
            # No contraction: the emulator rounds a * b - c twice, as __fmul_rn / __fsub_rn do.
            extra_cflags=["-O1", "-ffp-contract=off", "-DDETREX_LITE_CUDA_EMULATION"],
            build_directory=build_dir,
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path


# Shapes chosen to reach every branch of the plan: (vector width, lanes per row, packs per lane).
SHAPES = {
    # The paper's L = P = 4 with D = 32: the specialised kernel, 8 lanes of 4 floats.
    "paper_l4_p4_d32": dict(batch=2, heads=2, channels=32, queries=3, points=4,
                            levels=((6, 5), (3, 3), (2, 2), (1, 1))),
    "generic_l2_p3_d32": dict(batch=2, heads=2, channels=32, queries=4, points=3),
    "d48_idle_lanes": dict(batch=1, heads=2, channels=48, queries=3, points=2),  # 12 packs on 16 lanes
    "d6_scalar": dict(batch=1, heads=3, channels=6, queries=4, points=2),  # no float4 pack divides 6
    "d256_two_packs_per_lane": dict(batch=1, heads=1, channels=256, queries=2, points=2),
    "d33_odd": dict(batch=1, heads=2, channels=33, queries=2, points=2),
    "far_outside": dict(batch=1, heads=2, channels=8, queries=6, points=2, spread=(-2.0, 3.0)),
}

DTYPES = {  # value dtype, locations/weights dtype, tolerance
    "float64": (torch.float64, torch.float64, 1e-10),
    "float32": (torch.float32, torch.float32, 1e-5),
    "bfloat16+fp32_locations": (torch.bfloat16, torch.float32, 1e-2),
    "float16+fp32_locations": (torch.float16, torch.float32, 1e-2),
    "float16_all": (torch.float16, torch.float16, 1e-2),
}


def _check(emulated, inputs64, value_dtype, meta_dtype, tol, choice="auto", misalign=False):
    value, shapes, starts, loc, attn = inputs64
    value_q, loc_q, attn_q = value.to(value_dtype), loc.to(meta_dtype), attn.to(meta_dtype)
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1)).to(value_dtype)

    out = emulated.forward(value_q, shapes, starts, loc_q, attn_q, misalign, choice)
    grads = emulated.backward(value_q, shapes, starts, loc_q, attn_q, grad_out, misalign, choice)

    # The reference sees the same rounded inputs, in float64.
    leaves = [t.double().requires_grad_() for t in (value_q, loc_q, attn_q)]
    ref = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.double())

    assert out.dtype == value_dtype and out.shape == ref.shape
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol * scale)
    for name, g, r, dtype in zip(("value", "loc", "attn"), grads, ref_grads, (value_dtype, meta_dtype, meta_dtype)):
        assert g.dtype == dtype, f"grad {name} dtype"
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.double(), r, rtol=10 * tol, atol=10 * tol * scale,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16+fp32_locations"])
def test_emulated_kernels_match_reference(emulated, shape, dtype):
    _check(emulated, make_inputs(**SHAPES[shape]), *DTYPES[dtype])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_emulated_kernels_every_dtype_on_the_paper_shape(emulated, dtype):
    _check(emulated, make_inputs(**SHAPES["paper_l4_p4_d32"]), *DTYPES[dtype])


@pytest.mark.parametrize("choice", ["generic", "scalar", "index64"])
@pytest.mark.parametrize("dtype", ["float32", "float16+fp32_locations"])
def test_emulated_every_kernel_instance(emulated, choice, dtype):
    """The instances the automatic plan skips for these inputs give the same results."""
    _check(emulated, make_inputs(**SHAPES["paper_l4_p4_d32"]), *DTYPES[dtype], choice=choice)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16+fp32_locations"])
def test_emulated_misaligned_inputs(emulated, dtype):
    """Views that start mid-vector fall back to scalar loads / realigned locations, no fault."""
    _check(emulated, make_inputs(**SHAPES["paper_l4_p4_d32"]), *DTYPES[dtype], misalign=True)


@pytest.mark.parametrize(
    "dtype,channels,misalign,choice,expected",
    [
        (torch.float32, 32, False, "auto", (4, 8, True, True)),
        (torch.bfloat16, 32, False, "auto", (8, 4, True, True)),
        (torch.float64, 32, False, "auto", (2, 16, True, True)),
        (torch.float32, 48, False, "auto", (4, 16, True, True)),
        (torch.float32, 256, False, "auto", (4, 32, True, True)),
        (torch.float32, 6, False, "auto", (1, 8, True, True)),
        (torch.float32, 32, True, "auto", (1, 32, True, True)),
        (torch.float32, 32, False, "generic", (4, 8, False, True)),
        (torch.float32, 32, False, "index64", (1, 32, False, False)),
    ],
)
def test_emulated_plan(emulated, dtype, channels, misalign, choice, expected):
    value, _, _, loc, _ = make_inputs(**dict(SHAPES["paper_l4_p4_d32"], channels=channels))
    assert tuple(emulated.plan(value.to(dtype), loc, misalign, choice)) == expected


@pytest.mark.parametrize(
    "fault,message", [("out_of_bounds", "outside every live allocation"), ("exited_lane", "has exited")]
)
def test_emulator_catches_kernel_faults(emulated, fault, message):
    """The emulator is a real check: a kernel that reads past a buffer or shuffles with a lane
    that has returned fails the launch."""
    with pytest.raises(RuntimeError, match=message):
        emulated.run_faulty(fault)


@pytest.mark.parametrize(
    "setting,expected", [(None, 0), ("", 0), ("auto", 0), ("generic", 1), ("scalar", 2), ("index64", 3)]
)
def test_kernel_choice_from_environment(emulated, monkeypatch, setting, expected):
    """What tools/benchmark_ops.py --cuda-kernels sets to time each kernel instance on a GPU."""
    if setting is None:
        monkeypatch.delenv("DETREX_LITE_MSDA_CUDA_KERNEL", raising=False)
    else:
        monkeypatch.setenv("DETREX_LITE_MSDA_CUDA_KERNEL", setting)
    assert emulated.kernel_choice_from_env() == expected


def test_kernel_choice_typo_is_an_error(emulated, monkeypatch):
    monkeypatch.setenv("DETREX_LITE_MSDA_CUDA_KERNEL", "vectorised")
    with pytest.raises(RuntimeError, match="auto, generic, scalar or index64, got 'vectorised'"):
        emulated.kernel_choice_from_env()
