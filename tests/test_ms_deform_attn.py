"""The compiled multi-scale deformable attention operator against the grid_sample reference."""
import pytest
import torch

from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch

needs_ext = pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")


def make_inputs(
    batch=2, heads=2, channels=4, queries=5, points=2, levels=((6, 4), (3, 5)), dtype=torch.float64,
    device="cpu", seed=0, spread=(-0.15, 1.15),
):
    """Random inputs; locations spread a little beyond [0, 1] so some points fall outside."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_levels = len(levels)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=g, dtype=torch.float64)
    lo, hi = spread
    loc = torch.rand(batch, queries, heads, num_levels, points, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo
    attn = torch.rand(batch, queries, heads, num_levels, points, generator=g, dtype=torch.float64)
    to = dict(device=device, dtype=dtype)
    return (value.to(**to), spatial_shapes.to(device), level_start_index.to(device), loc.to(**to), attn.to(**to))


CASES = {
    "two_levels": dict(),
    "single_level_one_point": dict(levels=((7, 9),), points=1),
    "one_by_one_level": dict(levels=((1, 1), (4, 3), (2, 2)), points=3),
    "batch_not_multiple_of_step": dict(batch=5, queries=3),
    "odd_channels": dict(channels=33, heads=3, batch=1),  # the kernels' generic channel loop
    "vector_channels": dict(channels=32, heads=2, queries=9),  # the vectorised channel loop
    "vector_channels_16": dict(channels=16, heads=3, levels=((5, 7), (2, 3), (1, 2))),
    "far_outside": dict(spread=(-2.0, 3.0)),
}


def _grads(fn, inputs, grad_out):
    value, shapes, starts, loc, attn = [t.detach().clone() for t in inputs]
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return out, torch.autograd.grad(out, leaves, grad_out)


def _reference(value, shapes, starts, loc, attn):
    return ms_deform_attn_pytorch(value, shapes, loc, attn)


@needs_ext
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_forward_backward_match_reference(case, dtype, tol):
    inputs = make_inputs(dtype=dtype, **CASES[case])
    grad_out = torch.randn(inputs[3].shape[0], inputs[3].shape[1], inputs[0].shape[2] * inputs[0].shape[3], dtype=dtype)
    native = lambda v, s, i, l, a: ms_deform_attn(v, s, i, l, a, im2col_step=2)  # noqa: E731
    out, grads = _grads(native, inputs, grad_out)
    ref_out, ref_grads = _grads(_reference, inputs, grad_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=10 * tol, atol=10 * tol, msg=lambda m: f"grad {name}: {m}")


@needs_ext
def test_points_on_borders_and_pixel_centres():
    """Locations exactly at 0, 1, pixel centres and pixel edges (the interpolation seams)."""
    value, shapes, starts, _, _ = make_inputs(batch=1, heads=1, channels=3, levels=((4, 5),))
    xs = torch.tensor([0.0, 1.0, 0.5 / 5, 1 / 5, 4.5 / 5, 0.999999, 1e-7, 0.5], dtype=torch.float64)
    ys = torch.tensor([0.0, 1.0, 0.5 / 4, 2 / 4, 3.5 / 4, 0.0, 1.0, 0.25], dtype=torch.float64)
    loc = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(1, -1, 1, 1, 1, 2)
    attn = torch.ones(loc.shape[:-1], dtype=torch.float64)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, shapes, loc, attn), rtol=1e-12, atol=1e-12)
    # A pixel centre reads exactly that pixel: (x, y) = (0.5/5, 0.5/4) is pixel (0, 0).
    centre = torch.tensor([0.5 / 5, 0.5 / 4], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, starts, centre, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(out.view(-1), value[0, 0, 0])


@needs_ext
def test_gradcheck_native_op():
    inputs = make_inputs(batch=2, heads=2, channels=3, queries=3, points=2, levels=((3, 4), (2, 2)))
    value, shapes, starts, loc, attn = [t.clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, l, a: torch.ops.detrex_lite.ms_deform_attn_forward(v, shapes, starts, l, a, 1),
        (value, loc, attn),
    )


@needs_ext
def test_im2col_step_does_not_change_result_and_noncontiguous_inputs():
    value, shapes, starts, loc, attn = make_inputs(batch=3, dtype=torch.float32)
    expected = ms_deform_attn(value, shapes, starts, loc, attn, im2col_step=64)
    for step in (1, 2, 5):
        torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn, im2col_step=step), expected)
    # Same numbers laid out differently in memory.
    value_nc = value.transpose(2, 3).contiguous().transpose(2, 3)
    loc_nc = loc.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_nc.is_contiguous() and not loc_nc.is_contiguous()
    torch.testing.assert_close(ms_deform_attn(value_nc, shapes, starts, loc_nc, attn), expected)


@needs_ext
def test_thread_count_does_not_change_result():
    value, shapes, starts, loc, attn = make_inputs(batch=3, heads=4, channels=8, queries=40, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
            results.append([out] + list(torch.autograd.grad(out.sum(), leaves)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_ext
def test_cpu_half_precision_inputs_compute_in_float32():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
    out = ms_deform_attn(value.bfloat16(), shapes, starts, loc.bfloat16(), attn.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


def test_empty_queries():
    value, shapes, starts, loc, attn = make_inputs(queries=0)
    assert ms_deform_attn(value, shapes, starts, loc, attn).shape == (2, 0, 8)
