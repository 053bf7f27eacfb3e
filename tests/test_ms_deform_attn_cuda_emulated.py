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

from test_ms_deform_attn import assert_same_non_finite_semantics, make_inputs, non_finite_inputs, seam_locations

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

# The model's own instance: L = 4, P = 4, D = 32, M = 8. `queries` is chosen per test so that the
# rows just fill two 256-thread blocks (the emulator runs every thread: more would be slow).
MODEL_SHAPE = dict(batch=1, heads=8, channels=32, queries=1, points=4, levels=((6, 5), (3, 3), (2, 2), (1, 1)))
THREADS_PER_BLOCK = 256

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
    "setting,expected", [("", 0), ("auto", 0), ("generic", 1), ("scalar", 2), ("index64", 3)]
)
def test_kernel_choice_argument(emulated, setting, expected):
    """The operators' `kernel` argument (what tools/benchmark_ops.py --cuda-kernels passes to time
    each kernel instance on a GPU)."""
    assert emulated.kernel_choice(setting) == expected


def test_kernel_choice_typo_is_an_error(emulated):
    with pytest.raises(RuntimeError, match="auto, generic, scalar or index64, got 'vectorised'"):
        emulated.kernel_choice("vectorised")


def _blocks(emulated, value, loc, choice="auto", misalign=False):
    _, lanes, _, _ = emulated.plan(value, loc, misalign, choice)
    rows = value.shape[0] * loc.shape[1] * value.shape[2]
    return -(-rows * lanes // THREADS_PER_BLOCK)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_emulated_model_shape_several_blocks(emulated, dtype):
    """L = P = 4, D = 32, M = 8 (Deformable DETR's kernel instance) over several blocks."""
    value_dtype = DTYPES[dtype][0]
    value, _, _, loc, _ = make_inputs(**MODEL_SHAPE)
    _, lanes, _, _ = emulated.plan(value.to(value_dtype), loc, False, "auto")
    inputs = make_inputs(**dict(MODEL_SHAPE, queries=THREADS_PER_BLOCK // (lanes * 8) + 1))
    assert _blocks(emulated, inputs[0].to(value_dtype), inputs[3]) == 2
    assert emulated.plan(inputs[0].to(value_dtype), inputs[3], False, "auto")[2], "the specialised L=P=4 kernel"
    _check(emulated, inputs, *DTYPES[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16+fp32_locations"])
def test_emulated_index64_several_blocks(emulated, dtype):
    """The 64-bit-index instance over several blocks (32 lanes per row: 2 blocks here)."""
    inputs = make_inputs(**dict(MODEL_SHAPE, queries=2))
    value_dtype = DTYPES[dtype][0]
    assert emulated.plan(inputs[0].to(value_dtype), inputs[3], False, "index64")[3] is False
    assert _blocks(emulated, inputs[0].to(value_dtype), inputs[3], "index64") == 2
    _check(emulated, inputs, *DTYPES[dtype], choice="index64")


def _bad_layouts(shapes, starts):
    """Layouts inconsistent with value's S = 39 (levels (6, 4), (3, 5)) that would index outside value."""
    return {
        "huge_level": (torch.tensor([[10_000, 1_000], [3, 5]]), starts),
        "start_past_S": (shapes, torch.tensor([0, 100])),
        "negative_start": (shapes, torch.tensor([-5, 24])),
        "negative_width": (torch.tensor([[6, -4], [3, 5]]), starts),
        "overflowing_area": (torch.tensor([[2**40, 2**40], [3, 5]]), starts),
        "h_beyond_int32": (torch.tensor([[2**33, 1], [3, 5]]), starts),
        "last_level_past_S": (torch.tensor([[6, 4], [4, 5]]), starts),
    }


@pytest.mark.parametrize("layout_check", ["kernel", "host"])
@pytest.mark.parametrize("choice", ["auto", "index64"])
def test_emulated_inconsistent_layout_never_leaves_value(emulated, layout_check, choice):
    """A layout that disagrees with value: with the layout on the GPU ("kernel") the kernels'
    bounds test skips the level (every access is checked by the emulator: none leaves its
    tensor) and the host raises the flag after the launch; on the CPU ("host") the host check
    refuses it before any launch."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    grad_out = torch.ones(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])
    message = "outside value's S" if layout_check == "kernel" else "spatial_shapes|level_start_index"
    for name, (bad_shapes, bad_starts) in _bad_layouts(shapes, starts).items():
        with pytest.raises(RuntimeError, match=message) as forward_error:
            emulated.forward(value, bad_shapes, bad_starts, loc, attn, False, choice, layout_check)
        with pytest.raises(RuntimeError, match=message) as backward_error:
            emulated.backward(value, bad_shapes, bad_starts, loc, attn, grad_out, False, choice, layout_check)
        for error in (forward_error, backward_error):
            assert "emulated CUDA kernel failed" not in str(error.value), f"{name}: {error.value}"
    # The consistent layout passes the same way (the flag stays 0).
    out = emulated.forward(value, shapes, starts, loc, attn, False, choice, layout_check)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, shapes, loc, attn), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_emulated_non_finite_inputs_match_reference(emulated, dtype, tol):
    """NaN / infinite locations and weights: NaN where the reference gives NaN (docs/ops.md)."""
    value, shapes, starts, loc, attn = non_finite_inputs(dtype)
    grad_out = torch.randn(2, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(3))
    out = emulated.forward(value, shapes, starts, loc, attn)
    grads = emulated.backward(value, shapes, starts, loc, attn, grad_out)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ref = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, grad_out)
    assert_same_non_finite_semantics(out, grads, ref.detach(), ref_grads, tol)


def test_emulated_seam_cell_is_the_twice_rounded_one(emulated):
    """The CUDA kernels' pixel coordinate (device::mul_sub_rn: __fmul_rn then __fsub_rn) picks the
    CPU kernel's cell next to a pixel centre. The emulator rounds as those intrinsics do; whether
    nvcc keeps them apart is checked on a GPU (tests/test_ms_deform_attn_cuda.py)."""
    width = 167
    xs, cells = seam_locations(width)
    value = (torch.arange(width, dtype=torch.float32) ** 2).view(1, width, 1, 1)
    loc = torch.tensor([[x, 0.5] for x in xs], dtype=torch.float32).view(1, len(xs), 1, 1, 1, 2)
    attn = torch.ones(1, len(xs), 1, 1, 1)
    _, grad_loc, _ = emulated.backward(value, torch.tensor([[1, width]]), torch.tensor([0]), loc, attn,
                                       torch.ones(1, len(xs), 1))
    slope = grad_loc[0, :, 0, 0, 0, 0] / width
    torch.testing.assert_close(slope, torch.tensor([2.0 * c + 1 for c in cells]), rtol=0, atol=1e-3)

