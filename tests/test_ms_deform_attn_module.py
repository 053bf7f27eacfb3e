"""MultiScaleDeformableAttention: layouts, padding mask, initialisation, reference boxes."""
import math

import pytest
import torch

from detrex_lite.layers import MultiScaleDeformableAttention
from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers import multi_scale_deform_attn as msda_module
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn_pytorch

LEVELS = ((6, 8), (3, 4))
C, M, L, P = 16, 4, 2, 3


def _shapes():
    spatial_shapes = torch.tensor(LEVELS, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]]), int(areas.sum())


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs = dict(embed_dim=C, num_heads=M, num_levels=L, num_points=P, dropout=0.0) | kwargs
    attn = MultiScaleDeformableAttention(**kwargs)
    # Move away from the initialisation so offsets and weights depend on the query.
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.3)
        attn.attention_weights.weight.normal_(std=0.3)
    return attn.eval()


def _inputs(batch=2, queries=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, starts, s = _shapes()
    return dict(
        query=torch.randn(batch, queries, C, generator=g),
        value=torch.randn(batch, s, C, generator=g),
        reference_points=torch.rand(batch, queries, L, 2, generator=g),
        spatial_shapes=spatial_shapes,
        level_start_index=starts,
    )


def _manual_forward(attn, query, value, reference_points, spatial_shapes, level_start_index):
    """Eq. 3 written out with the reference sampler (no residual)."""
    n, lq, _ = query.shape
    v = attn.value_proj(value).view(n, -1, M, C // M)
    offsets = attn.sampling_offsets(query).view(n, lq, M, L, P, 2)
    weights = attn.attention_weights(query).view(n, lq, M, L * P).softmax(-1).view(n, lq, M, L, P)
    wh = spatial_shapes.flip(-1).to(query.dtype)  # (W, H) per level
    loc = reference_points[:, :, None, :, None, :] + offsets / wh[None, None, None, :, None, :]
    return attn.output_proj(ms_deform_attn_pytorch(v, spatial_shapes, loc, weights))


def test_output_matches_eq3_and_residual():
    attn = _module()
    x = _inputs()
    out = attn(**x)
    expected = _manual_forward(attn, **x)
    torch.testing.assert_close(out, x["query"] + expected, rtol=1e-5, atol=1e-5)
    no_identity = _module(add_identity=False)
    torch.testing.assert_close(no_identity(**x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_locations_equal_broadcast_formula_bit_for_bit(dtype):
    # The gather + addcdiv_ form against the official broadcast, on non-contiguous references.
    attn = _module()
    g = torch.Generator().manual_seed(3)
    spatial_shapes, _, _ = _shapes()
    refs = torch.rand(2, L, 7, 2, generator=g, dtype=dtype).transpose(1, 2)  # (N, Lq, L, 2), strided
    offsets = torch.randn(2, 7, M * L * P * 2, generator=g, dtype=dtype) * 4
    wh = spatial_shapes.flip(-1).to(dtype)
    expected = refs[:, :, None, :, None, :] + offsets.view(2, 7, M, L, P, 2) / wh[None, None, None, :, None, :]
    got = attn.point_locations(refs, offsets, spatial_shapes)
    assert got.shape == (2, 7, M, L, P, 2) and got.dtype == dtype
    assert torch.equal(got, expected)


def test_batch_first_false_is_transposed_batch_first():
    x = _inputs()
    out = _module()(**x)
    seq_first = _module(batch_first=False)
    x_t = dict(x, query=x["query"].transpose(0, 1), value=x["value"].transpose(0, 1))
    out_t = seq_first(**x_t)
    assert out_t.shape == (5, 2, C)
    torch.testing.assert_close(out_t.transpose(0, 1), out, rtol=1e-6, atol=1e-6)


def test_query_pos_and_identity():
    attn = _module()
    x = _inputs()
    pos = torch.randn_like(x["query"])
    out = attn(**x, query_pos=pos)
    shifted = attn(**dict(x, query=x["query"] + pos))
    # Same projections (query + pos) but the residual is the query without pos.
    torch.testing.assert_close(out, shifted - pos, rtol=1e-5, atol=1e-5)
    identity = torch.zeros_like(x["query"])
    torch.testing.assert_close(attn(**x, identity=identity), attn(**x) - x["query"], rtol=1e-5, atol=1e-5)


def test_value_defaults_to_query():
    attn = _module()
    x = _inputs(queries=_shapes()[2])
    out = attn(**dict(x, value=None))
    torch.testing.assert_close(out, attn(**dict(x, value=x["query"])))


def test_padding_mask_hides_padded_values():
    attn = _module()
    x = _inputs()
    mask = torch.zeros(2, x["value"].shape[1], dtype=torch.bool)
    mask[0, 10:30] = True
    mask[1, 50:] = True
    out = attn(**x, key_padding_mask=mask)
    changed = x["value"].clone()
    changed[mask] = torch.randn(int(mask.sum()), C) * 100
    torch.testing.assert_close(attn(**dict(x, value=changed), key_padding_mask=mask), out)
    # Without the mask the change is visible.
    assert not torch.allclose(attn(**dict(x, value=changed)), attn(**x))


def test_initialisation():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(embed_dim=32, num_heads=8, num_levels=3, num_points=4)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    # Head h points at angle 2*pi*h/8, scaled so max(|x|, |y|) = 1; point k at k + 1.
    ring = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    expected = ring[:, None, None, :] * torch.arange(1, 5, dtype=torch.float32)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(8, 3, 4, 2), rtol=0, atol=1e-6)
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    for proj in (attn.value_proj, attn.output_proj):
        assert torch.count_nonzero(proj.bias) == 0
        bound = math.sqrt(6 / (32 + 32))  # xavier_uniform
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 3
    # Zero attention logits: a uniform softmax, so the output is the mean over L*P samples.
    spatial_shapes = torch.tensor([[4, 4], [2, 2], [1, 1]])
    starts = torch.tensor([0, 16, 20])
    query = torch.randn(1, 2, 32)
    value = torch.randn(1, 21, 32)
    ref = torch.rand(1, 2, 3, 2)
    attn.add_identity = False
    out = attn(query, value=value, reference_points=ref, spatial_shapes=spatial_shapes, level_start_index=starts)
    v = attn.value_proj(value).view(1, 21, 8, 4)
    wh = torch.tensor([[4.0, 4.0], [2.0, 2.0], [1.0, 1.0]])
    loc = ref[:, :, None, :, None, :] + bias[None, None] / wh[None, None, None, :, None, :]
    uniform = torch.full((1, 2, 8, 3, 4), 1 / 12)
    torch.testing.assert_close(
        out, attn.output_proj(ms_deform_attn_pytorch(v, spatial_shapes, loc, uniform)), rtol=1e-5, atol=1e-5
    )


def test_reference_boxes():
    attn = _module(add_identity=False)
    x = _inputs()
    boxes = torch.cat([torch.rand(2, 5, L, 2) * 0.6 + 0.2, torch.rand(2, 5, L, 2) * 0.3 + 0.05], -1)
    out = attn(**dict(x, reference_points=boxes))
    n, lq = 2, 5
    v = attn.value_proj(x["value"]).view(n, -1, M, C // M)
    offsets = attn.sampling_offsets(x["query"]).view(n, lq, M, L, P, 2)
    weights = attn.attention_weights(x["query"]).view(n, lq, M, L * P).softmax(-1).view(n, lq, M, L, P)
    # Offsets scaled by the box half-size, divided by the number of points.
    loc = boxes[:, :, None, :, None, :2] + offsets / P * boxes[:, :, None, :, None, 2:] * 0.5
    expected = attn.output_proj(ms_deform_attn_pytorch(v, x["spatial_shapes"], loc, weights))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_reference_points_and_mask():
    attn = _module()
    x = _inputs()
    with pytest.raises(ValueError, match="reference_points"):
        attn(**dict(x, reference_points=torch.rand(2, 5, L, 3)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(**x, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))


def test_backward_reaches_all_parameters():
    attn = _module().train()
    x = _inputs()
    attn(**x).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _spy_on_op(monkeypatch):
    """Records (value, locations, weights, output) dtypes of each ms_deform_attn call the module makes."""
    calls = []

    def spy(value, layout, sampling_locations, attention_weights, im2col_step, backend, extension=None):
        out = msda.ms_deform_attn_with_layout(
            value, layout, sampling_locations, attention_weights, im2col_step, backend, extension=extension
        )
        calls.append((value.dtype, sampling_locations.dtype, attention_weights.dtype, out.dtype))
        return out

    monkeypatch.setattr(msda_module, "ms_deform_attn_with_layout", spy)
    return calls


def test_autocast_cpu_bfloat16_close_to_float32(monkeypatch):
    attn = _module()
    x = _inputs()
    expected = attn(**x)
    calls = _spy_on_op(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(**x)
    assert torch.isfinite(out).all()
    # The module leaves the dtypes to ms_deform_attn, which computes in float32 on CPU.
    assert calls == [(torch.bfloat16, torch.float32, torch.bfloat16, torch.float32)]
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_module_keeps_float32_sampling_locations(monkeypatch, dtype):
    """A .bfloat16() / .half() module passes float32 locations and weights next to its 16-bit
    value (16-bit locations are off by up to a third of a pixel on large maps)."""
    attn = _module()
    x = _inputs()
    expected = attn(**x)
    calls = _spy_on_op(monkeypatch)
    out = attn.to(dtype)(**{k: (v.to(dtype) if v.is_floating_point() else v) for k, v in x.items()})
    assert calls == [(dtype, torch.float32, torch.float32, dtype)]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


def test_float64_module_matches_float32(monkeypatch):
    attn = _module()
    x = _inputs()
    calls = _spy_on_op(monkeypatch)
    out64 = attn.double()(**{k: (v.double() if v.is_floating_point() else v) for k, v in x.items()})
    assert calls[0] == (torch.float64,) * 4
    torch.testing.assert_close(out64.float(), _module()(**x), rtol=1e-5, atol=1e-5)
