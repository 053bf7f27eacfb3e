"""CUDA twins of the CPU operator tests (skipped without a GPU or without the CUDA build)."""
import pytest
import torch

from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch

from test_ms_deform_attn import CASES, assert_matches_float64_reference, make_inputs

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
