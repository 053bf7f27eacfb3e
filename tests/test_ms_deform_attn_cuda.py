"""CUDA twins of the CPU operator tests (skipped without a GPU or without the CUDA build)."""
import pytest
import torch

from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch

from test_ms_deform_attn import (
    CASES,
    assert_matches_float64_reference,
    assert_same_non_finite_semantics,
    make_inputs,
    non_finite_inputs,
    seam_locations,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not msda.extension_available("cuda"), reason="detrex_lite._C is built without CUDA"),
]


def _run(fn, inputs, grad_out):
    value, shapes, starts, loc, attn = [t.detach().clone() for t in inputs]
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out.to(out.dtype))


def _native(v, s, i, l, a):
    return ms_deform_attn(v, s, i, l, a, im2col_step=2)


def _reference(v, s, i, l, a):
    return ms_deform_attn_pytorch(v, s, l, a)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)]
)
def test_cuda_matches_float64_reference(case, dtype, tol):
    inputs64 = make_inputs(device="cuda", **CASES[case])
    value = inputs64[0]
    grad_out = torch.randn(value.shape[0], inputs64[3].shape[1], value.shape[2] * value.shape[3], device="cuda",
                           dtype=torch.float64)
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs64]
    # The reference sees the same rounded inputs, in float64.
    rounded = [t.double() if t.is_floating_point() else t for t in inputs]
    out, grads = _run(_native, inputs, grad_out)
    ref_out, ref_grads = _run(_reference, rounded, grad_out)
    assert out.dtype == dtype
    scale = max(1.0, ref_out.abs().max().item())
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol * scale)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        # Location gradients scale with the map size; compare relative to their magnitude.
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.double(), r, rtol=10 * tol, atol=10 * tol * scale)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
def test_cuda_mixed_precision_matches_float64_reference(case, value_dtype):
    """A 16-bit value with float32 locations and weights, as the module passes them: output and
    grad_value in value's dtype, location and weight gradients in float32."""
    inputs64 = make_inputs(device="cuda", **CASES[case])
    assert_matches_float64_reference(_native, inputs64, value_dtype, torch.float32, tol=1e-2)


@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
def test_cuda_mixed_precision_ops_return_contract_dtypes(value_dtype):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32, device="cuda")
    value = value.to(value_dtype)
    out = torch.ops.detrex_lite.ms_deform_attn_forward(value, shapes, starts, loc, attn, 64)
    grads = torch.ops.detrex_lite.ms_deform_attn_backward(value, shapes, starts, loc, attn, torch.ones_like(out), 64)
    assert [out.dtype] + [g.dtype for g in grads] == [value_dtype, value_dtype, torch.float32, torch.float32]
    with pytest.raises(RuntimeError, match="sampling_loc"):
        torch.ops.detrex_lite.ms_deform_attn_forward(value.float(), shapes, starts, loc.half(), attn, 64)
    with pytest.raises(RuntimeError, match="attn_weight"):
        torch.ops.detrex_lite.ms_deform_attn_forward(value.double(), shapes, starts, loc.double(), attn, 64)


def test_cuda_gradcheck():
    inputs = make_inputs(batch=2, heads=2, channels=3, queries=3, points=2, levels=((3, 4), (2, 2)), device="cuda")
    value, shapes, starts, loc, attn = [t.clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, l, a: torch.ops.detrex_lite.ms_deform_attn_forward(v, shapes, starts, l, a, 1), (value, loc, attn)
    )


def test_cuda_equals_cpu_kernel():
    cpu = make_inputs(batch=3, heads=4, channels=32, queries=50, dtype=torch.float64)
    out_cpu, grads_cpu = _run(_native, cpu, torch.ones(3, 50, 128, dtype=torch.float64))
    cuda = [t.cuda() for t in cpu]
    out_cuda, grads_cuda = _run(_native, cuda, torch.ones(3, 50, 128, dtype=torch.float64, device="cuda"))
    torch.testing.assert_close(out_cuda.cpu(), out_cpu, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_cuda, grads_cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


def test_cuda_autocast_float16():
    """Under CUDA autocast value runs in the autocast dtype, locations and weights in float32."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32, device="cuda")
    leaves = [value.clone().requires_grad_(), loc.clone().requires_grad_(), attn.clone().requires_grad_()]
    with torch.autocast("cuda", dtype=torch.float16):
        out = ms_deform_attn(*leaves[:1], shapes, starts, *leaves[1:])
        # Direct call with bf16 locations: the AutocastCUDA kernel brings them to float32.
        direct = torch.ops.detrex_lite.ms_deform_attn_forward(value, shapes, starts, loc.bfloat16(), attn, 64)
    assert out.dtype == torch.float16 and direct.dtype == torch.float16
    # The reference on the inputs the kernel saw (value rounded to float16), in float64.
    expected = ms_deform_attn_pytorch(value.half().double(), shapes, loc.double(), attn.double())
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(out.double(), expected, rtol=1e-2, atol=1e-2 * scale)
    expected_direct = ms_deform_attn_pytorch(value.half().double(), shapes, loc.bfloat16().double(), attn.double())
    torch.testing.assert_close(direct.double(), expected_direct, rtol=1e-2, atol=1e-2 * scale)
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert [g.dtype for g in grads] == [torch.float32] * 3 and all(torch.isfinite(g).all() for g in grads)


def test_cuda_autocast_bfloat16_module_close_to_float32():
    from detrex_lite.layers import MultiScaleDeformableAttention

    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2, dropout=0.0).cuda()
    _, shapes, starts, _, _ = make_inputs(device="cuda")
    query, value = torch.randn(2, 5, 16, device="cuda"), torch.randn(2, 39, 16, device="cuda")
    ref = torch.rand(2, 5, 2, 2, device="cuda")
    expected = attn(query, value=value, reference_points=ref, spatial_shapes=shapes, level_start_index=starts)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = attn(query, value=value, reference_points=ref, spatial_shapes=shapes, level_start_index=starts)
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


def test_cuda_compile():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), backend="aot_eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(value, loc, attn), ms_deform_attn_pytorch(value, shapes, loc, attn))


# The model's own kernel instance (L = 4, P = 4, D = 32, M = 8), 2 x 150 queries: many blocks.
MODEL_SHAPE = dict(batch=2, heads=8, channels=32, queries=150, points=4,
                   levels=((25, 42), (13, 21), (7, 11), (4, 6)))
KERNELS = ["auto", "generic", "scalar", "index64"]  # the operators' `kernel` argument
MODEL_DTYPES = {  # value dtype, locations/weights dtype, tolerance
    "float64": (torch.float64, torch.float64, 1e-10),
    "float32": (torch.float32, torch.float32, 1e-5),
    "float16": (torch.float16, torch.float16, 1e-2),
    "bfloat16": (torch.bfloat16, torch.bfloat16, 2e-2),
    "float16+fp32_locations": (torch.float16, torch.float32, 1e-2),
    "bfloat16+fp32_locations": (torch.bfloat16, torch.float32, 2e-2),
}


def _raw_op_vs_reference(inputs64, value_dtype, sample_dtype, tol, misalign=False, kernel="auto"):
    """The raw operators on rounded inputs against the float64 reference on the same inputs.
    Location gradients of samples within 1e-4 px of a cell seam are left out (the float64
    reference may pick the other cell there). `misalign`: value and grad_output are views that
    start one element into their buffers (buf[1:]), as a slice of a larger tensor may."""
    value, shapes, starts, loc, attn = inputs64
    g = torch.Generator(device="cuda").manual_seed(1)
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device="cuda",
                           dtype=torch.float64, generator=g)
    value_q, loc_q, attn_q, grad_q = value.to(value_dtype), loc.to(sample_dtype), attn.to(sample_dtype), grad_out.to(value_dtype)
    if misalign:
        def shifted(t):
            buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
            view = buf[1:].view(t.shape)
            view.copy_(t)
            return view
        value_q, grad_q = shifted(value_q), shifted(grad_q)
        assert value_q.data_ptr() % 16 != 0
    out = torch.ops.detrex_lite.ms_deform_attn_forward(value_q, shapes, starts, loc_q, attn_q, 64, kernel)
    grads = torch.ops.detrex_lite.ms_deform_attn_backward(value_q, shapes, starts, loc_q, attn_q, grad_q, 64, kernel)
    leaves = [t.double().requires_grad_() for t in (value_q, loc_q, attn_q)]
    ref = ms_deform_attn_pytorch(leaves[0], shapes, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves, grad_q.double())
    assert out.dtype == value_dtype and [g.dtype for g in grads] == [value_dtype, sample_dtype, sample_dtype]
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=tol, atol=tol * scale)
    wh = shapes.flip(-1).double()[None, None, None, :, None, :]
    pixel = loc_q.double() * wh - 0.5
    on_seam = ((pixel - pixel.round()).abs() < 1e-4).any(-1, keepdim=True).expand_as(pixel)
    for name, g, r in zip(("value", "locations", "weights"), grads, ref_grads):
        if name == "locations":
            g, r = g.double().masked_fill(on_seam, 0), r.masked_fill(on_seam, 0)
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.double(), r, rtol=10 * tol, atol=10 * tol * scale,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", sorted(MODEL_DTYPES))
def test_cuda_model_shape_every_dtype_and_kernel(kernel, dtype):
    """L = P = 4, D = 32, M = 8 over many blocks, in every dtype and every kernel instance."""
    _raw_op_vs_reference(make_inputs(device="cuda", **MODEL_SHAPE), *MODEL_DTYPES[dtype], kernel=kernel)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16+fp32_locations", "float64"])
def test_cuda_model_shape_misaligned_view(kernel, dtype):
    """value and grad_output start 1 element into their buffers: the scalar path, no fault."""
    _raw_op_vs_reference(make_inputs(device="cuda", **MODEL_SHAPE), *MODEL_DTYPES[dtype], misalign=True,
                         kernel=kernel)


@pytest.mark.parametrize("channels", [48, 64])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16+fp32_locations", "float16"])
def test_cuda_d48_d64(channels, kernel, dtype):
    _raw_op_vs_reference(make_inputs(device="cuda", **dict(MODEL_SHAPE, channels=channels)), *MODEL_DTYPES[dtype],
                         kernel=kernel)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cuda_non_finite_inputs_match_reference(dtype, tol):
    inputs = non_finite_inputs(dtype, device="cuda")
    grad_out = torch.randn(2, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(3)).cuda()
    out, grads = _run(_native, inputs, grad_out)
    ref, ref_grads = _run(_reference, inputs, grad_out)
    assert_same_non_finite_semantics(out, grads, ref, ref_grads, tol)


def test_cuda_seam_cell_is_the_twice_rounded_one():
    """nvcc must not contract loc * W - 0.5 into one FMA (device::mul_sub_rn): the cell next to
    a pixel centre is the CPU kernel's."""
    width = 167
    xs, cells = seam_locations(width)
    value = (torch.arange(width, dtype=torch.float32, device="cuda") ** 2).view(1, width, 1, 1)
    loc = torch.tensor([[x, 0.5] for x in xs], dtype=torch.float32, device="cuda").view(1, len(xs), 1, 1, 1, 2)
    attn = torch.ones(1, len(xs), 1, 1, 1, device="cuda")
    shapes, starts = torch.tensor([[1, width]], device="cuda"), torch.tensor([0], device="cuda")
    _, grad_loc, _ = torch.ops.detrex_lite.ms_deform_attn_backward(
        value, shapes, starts, loc, attn, torch.ones(1, len(xs), 1, device="cuda"), 64)
    slope = grad_loc[0, :, 0, 0, 0, 0].cpu() / width
    torch.testing.assert_close(slope, torch.tensor([2.0 * c + 1 for c in cells]), rtol=0, atol=1e-3)


@pytest.mark.parametrize("layout_device", ["cuda", "cpu"])
def test_cuda_inconsistent_layout_is_an_error_and_the_gpu_stays_usable(layout_device):
    """A layout on the GPU is bounds-tested in the kernels (error flag raised after the launch);
    on the CPU it is checked before the launch. Either way: RuntimeError, no fault, and the next
    call works (no sticky CUDA error)."""
    value, shapes, starts, loc, attn = make_inputs(device="cuda", dtype=torch.float32)
    grad_out = torch.ones(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device="cuda")
    bad = [(torch.tensor([[10_000, 1_000], [3, 5]]), starts.cpu()), (shapes.cpu(), torch.tensor([0, 10**9])),
           (torch.tensor([[2**40, 2**40], [3, 5]]), starts.cpu()), (shapes.cpu(), torch.tensor([-7, 24]))]
    for bad_shapes, bad_starts in bad:
        bad_shapes, bad_starts = bad_shapes.to(layout_device), bad_starts.to(layout_device)
        with pytest.raises(RuntimeError, match="spatial_shapes|level_start_index"):
            torch.ops.detrex_lite.ms_deform_attn_forward(value, bad_shapes, bad_starts, loc, attn, 64)
        with pytest.raises(RuntimeError, match="spatial_shapes|level_start_index"):
            torch.ops.detrex_lite.ms_deform_attn_backward(value, bad_shapes, bad_starts, loc, attn, grad_out, 64)
    torch.cuda.synchronize()
    out = torch.ops.detrex_lite.ms_deform_attn_forward(value, shapes.to(layout_device), starts.to(layout_device),
                                                        loc, attn, 64)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, shapes, loc, attn), rtol=1e-5, atol=1e-5)

