"""ms_deform_attn's contract: input validation, the fallback without _C, torch.compile, fake
tensors and autocast."""
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch

from test_ms_deform_attn import make_inputs

needs_ext = pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")


def _bad_inputs():
    """(argument expected in the message, the five tensors with that argument broken)."""
    v, s, i, l, a = make_inputs(dtype=torch.float32)  # N=2, S=39, M=2, D=4, Lq=5, L=2, P=2
    return [
        ("value", (v[0], s, i, l, a)),  # rank 3
        ("spatial_shapes", (v, s.flatten(), i, l, a)),
        ("spatial_shapes", (v, s.int(), i, l, a)),
        ("level_start_index", (v, s, i.int(), l, a)),
        ("level_start_index", (v, s, i[:1], l, a)),
        ("level_start_index", (v, s, i + 1, l, a)),  # inconsistent with spatial_shapes
        ("spatial_shapes", (v[:, :-1], s, i, l, a)),  # sum(H*W) != S
        ("spatial_shapes", (v, s * torch.tensor([[1, 0]]), i, l, a)),  # zero width
        ("sampling_locations", (v, s, i, l[:1], a)),  # N mismatch
        ("sampling_locations", (v, s, i, l[:, :, :1], a)),  # M mismatch
        ("sampling_locations", (v, s, i, l[:, :, :, :1], a)),  # L mismatch
        ("sampling_locations", (v, s, i, l[..., :1], a)),  # not (x, y)
        ("attention_weights", (v, s, i, l, a[..., :1])),  # P mismatch
        ("attention_weights", (v, s, i, l, a[:, :2])),  # Lq mismatch
        ("sampling_locations", (v, s, i, l.double(), a)),  # dtype mismatch
        ("attention_weights", (v, s, i, l, a.half())),
        ("value", (v.long(), s, i, l, a)),
        ("sampling_locations", (v, s, i, l.to("meta"), a)),  # device mismatch
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_bad_input_raises_value_error_naming_argument(index):
    argument, tensors = _bad_inputs()[index]
    with pytest.raises(ValueError, match=argument):
        ms_deform_attn(*tensors)


def test_bad_im2col_step():
    with pytest.raises(ValueError, match="im2col_step"):
        ms_deform_attn(*make_inputs(), im2col_step=0)


def test_fallback_without_extension_warns_once(monkeypatch):
    inputs = make_inputs()
    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_fallback_warned", False)
    assert not msda.extension_available("cpu")
    assert msda.extension_info() == {"built": False, "with_cuda": False, "cuda_archs": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ms_deform_attn(*inputs)
        out2 = ms_deform_attn(*inputs)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "not built" in messages[0] and "pip install" in messages[0]
    value, shapes, _, loc, attn = inputs
    expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out2, expected, rtol=0, atol=0)


def test_module_runs_without_extension(monkeypatch):
    from detrex_lite.layers import MultiScaleDeformableAttention

    monkeypatch.setattr(msda, "_C", None)
    monkeypatch.setattr(msda, "_fallback_warned", True)  # already warned: stays quiet
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2, dropout=0.0)
    _, shapes, starts, _, _ = make_inputs()
    query = torch.randn(2, 5, 16)
    value = torch.randn(2, 39, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attn(query, value=value, reference_points=torch.rand(2, 5, 2, 2), spatial_shapes=shapes,
                   level_start_index=starts)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()


@needs_ext
def test_fake_tensor_shapes():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32, queries=7)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (value, shapes, starts, loc, attn)]
        out = torch.ops.detrex_lite.ms_deform_attn_forward(*fake, 64)
        grads = torch.ops.detrex_lite.ms_deform_attn_backward(*fake, out, 64)
    assert out.shape == (2, 7, 8) and out.dtype == torch.float32
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]


@needs_ext
@pytest.mark.parametrize("backend,fullgraph", [("eager", True), ("aot_eager", True)])
def test_torch_compile(backend, fullgraph):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)

    def fn(v, l, a):
        return (ms_deform_attn(v, shapes, starts, l, a) * 2).sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=fullgraph)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = compiled(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ref = (ms_deform_attn_pytorch(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2]) * 2).sum(-1)
    ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@needs_ext
def test_autocast_cpu_bfloat16_runs_in_float32():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Mixed dtypes as a model under autocast produces them: bf16 value, fp32 locations.
        out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn)
        direct = torch.ops.detrex_lite.ms_deform_attn_forward(value, shapes, starts, loc.bfloat16(), attn, 64)
    assert out.dtype == torch.float32 and direct.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value.bfloat16().float(), shapes, loc, attn))
    # The registered autocast rule upcast the bf16 locations back to float32 before the kernel.
    torch.testing.assert_close(direct, ms_deform_attn_pytorch(value, shapes, loc.bfloat16().float(), attn))
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
