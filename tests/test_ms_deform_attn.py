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


def assert_matches_float64_reference(fn, inputs64, value_dtype, sample_dtype, tol):
    """Rounds value to `value_dtype` and locations and weights to `sample_dtype`, runs fn
    forward and backward, and compares with the float64 reference on the same rounded inputs:
    forward to rtol `tol` and atol `tol` * max|reference|, gradients to 10x that. Output and
    gradients must come back in the dtypes of the contract (value's for the output and
    grad_value, the input's own for the location and weight gradients)."""
    value, shapes, starts, loc, attn = inputs64
    grad_out = torch.randn(
        value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
        generator=torch.Generator().manual_seed(1), dtype=torch.float64,
    ).to(value.device)
    rounded = (value.to(value_dtype), shapes, starts, loc.to(sample_dtype), attn.to(sample_dtype))
    out, grads = _grads(fn, rounded, grad_out.to(value_dtype))
    ref_out, ref_grads = _grads(
        _reference, [t.double() if t.is_floating_point() else t for t in rounded], grad_out
    )
    assert out.dtype == value_dtype
    scale = max(1.0, ref_out.abs().max().item())
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol * scale)
    names = ("value", "sampling_locations", "attention_weights")
    for name, g, r, expected_dtype in zip(names, grads, ref_grads, (value_dtype, sample_dtype, sample_dtype)):
        assert g.dtype == expected_dtype, f"grad {name}: {g.dtype}"
        # Location gradients scale with the map size: compare relative to their magnitude.
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(
            g.double(), r, rtol=10 * tol, atol=10 * tol * scale, msg=lambda m: f"grad {name}: {m}"
        )


@needs_ext
@pytest.mark.parametrize("case", ["two_levels", "odd_channels", "vector_channels", "far_outside"])
@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sample_dtype", ["float32", "value"])
def test_cpu_half_value_matches_float64_reference(case, value_dtype, sample_dtype):
    """float16/bfloat16 value with float32 locations and weights (what the module passes), and
    all three in the half type: computed in float32, results in the contract's dtypes."""
    sample_dtype = torch.float32 if sample_dtype == "float32" else value_dtype
    native = lambda v, s, i, l, a: ms_deform_attn(v, s, i, l, a, im2col_step=2)  # noqa: E731
    assert_matches_float64_reference(native, make_inputs(**CASES[case]), value_dtype, sample_dtype, tol=1e-2)


@needs_ext
@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
def test_cpu_float32_locations_are_not_rounded(value_dtype):
    """A bfloat16 location near 0.5 on a 167-pixel-wide map is off by up to a sixth of a pixel
    (0.5 * 2**-9 * 167); with float32 locations next to a half value the sample must land where
    float32 puts it. On a map whose value is its column index (exact in 16 bits) the weight's
    gradient is the sampled value, i.e. the pixel x coordinate, in float32."""
    height, width = 3, 167
    value = torch.arange(width, dtype=torch.float32).repeat(height).view(1, height * width, 1, 1).to(value_dtype)
    shapes = torch.tensor([[height, width]])
    starts = torch.tensor([0])
    x = 0.5 + torch.linspace(-0.01, 0.01, 41, dtype=torch.float64)  # not on the bfloat16 grid
    loc = torch.stack([x, torch.full_like(x, 0.5)], -1).float().view(1, -1, 1, 1, 1, 2)
    attn = torch.ones(loc.shape[:-1]).requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    (grad_attn,) = torch.autograd.grad(out, attn, torch.ones_like(out))
    assert grad_attn.dtype == torch.float32
    pixel_x = loc[..., 0].double() * width - 0.5
    torch.testing.assert_close(grad_attn.double(), pixel_x, rtol=0, atol=1e-4)


def test_empty_queries():
    value, shapes, starts, loc, attn = make_inputs(queries=0)
    assert ms_deform_attn(value, shapes, starts, loc, attn).shape == (2, 0, 8)


def non_finite_inputs(dtype=torch.float64, device="cpu"):
    """Inputs with NaN / infinite locations and weights, on and off the maps, in some rows."""
    value, shapes, starts, loc, attn = make_inputs(batch=2, heads=2, channels=8, queries=8, points=2, dtype=dtype)
    nan, inf = float("nan"), float("inf")
    loc[0, 0, 0, 0, 0, 0] = nan  # x NaN
    loc[0, 1, 1, 1, 1, 1] = inf  # y +inf
    loc[1, 2, 0, 0, 1, 0] = -inf
    loc[1, 3, 1, 0, 0] = nan  # both
    attn[0, 4, 0, 1, 0] = nan  # weight NaN on the map
    loc[0, 5, 1, 0, 1] = 3.0  # off the map with a NaN weight: the reference's 0 * NaN
    attn[0, 5, 1, 0, 1] = nan
    loc[1, 6, 0, 1, 0] = -2.0  # off the map with an infinite weight: 0 * inf
    attn[1, 6, 0, 1, 0] = inf
    loc[1, 7, 1, 0, 0, 0] = 1e30  # finite, far off the map: zero, not NaN
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def assert_same_non_finite_semantics(out, grads, ref, ref_grads, tol=1e-10):
    """NaN in, NaN out: the output's NaN entries are the reference's, and so are the weight
    gradient's; a location gradient is NaN (both coordinates) where the reference's pair has a
    NaN; everything else matches."""
    def close(a, b, what):
        assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN positions differ from the reference"
        keep = ~b.isnan()
        torch.testing.assert_close(a.double()[keep], b.double()[keep], rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")

    assert out.isnan().any(), "the inputs must poison some rows"
    close(out, ref, "output")
    close(grads[0], ref_grads[0], "grad value")
    ref_loc_nan = ref_grads[1].isnan().any(-1, keepdim=True).expand_as(ref_grads[1])
    close(grads[1], torch.where(ref_loc_nan, float("nan"), ref_grads[1].double()), "grad locations")
    close(grads[2], ref_grads[2], "grad weights")


@needs_ext
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_non_finite_locations_and_weights_match_reference(dtype, tol):
    inputs = non_finite_inputs(dtype)
    grad_out = torch.randn(2, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(3))
    out, grads = _grads(lambda v, s, i, l, a: ms_deform_attn(v, s, i, l, a), inputs, grad_out)
    ref, ref_grads = _grads(_reference, inputs, grad_out)
    assert_same_non_finite_semantics(out, grads, ref, ref_grads, tol)


def seam_locations(size: int, dtype=torch.float32):
    """Locations x in [0, 1] for which loc * size - 0.5 lands in a different bilinear cell when the
    product is rounded before the subtraction than with one fused multiply-add (nvcc's and GCC's
    contraction), with the cell the op must pick: floor(fl(fl(x * size) - 0.5))."""
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    found, cells = [], []
    for k in range(1, size):
        centre = np_dtype((k + 0.5) / size)
        x = centre
        for _ in range(8):  # a few ulps either side of the pixel centre
            for cand in (x, np.nextafter(x, np_dtype(0))):
                exact = float(cand) * size  # exact in float64 for a float32 cand
                two_roundings = np.floor(np_dtype(np_dtype(cand * np_dtype(size)) - np_dtype(0.5)))
                fused = np.floor(np_dtype(exact - 0.5)) if dtype == torch.float32 else None
                if fused is not None and fused != two_roundings:
                    found.append(float(cand))
                    cells.append(int(two_roundings))
            x = np.nextafter(x, np_dtype(1))
    return found, cells


@needs_ext
def test_seam_cell_is_the_twice_rounded_one():
    """A coordinate within an ulp of a pixel centre: the op rounds loc * W, then subtracts 0.5
    (no fused multiply-add), so the cell, and with it the location gradient, is
    floor(fl(fl(x * W) - 0.5)) on every machine (the CUDA kernels use __fmul_rn / __fsub_rn)."""
    width = 167
    xs, cells = seam_locations(width)
    assert len(xs) >= 3, "no seam location found: the test could not fail"
    # One row of pixels with value x^2 at pixel x: each cell has its own slope 2x + 1.
    value = (torch.arange(width, dtype=torch.float32) ** 2).view(1, width, 1, 1)
    shapes = torch.tensor([[1, width]])
    starts = torch.tensor([0])
    loc = torch.tensor([[x, 0.5] for x in xs], dtype=torch.float32).view(1, len(xs), 1, 1, 1, 2).requires_grad_()
    attn = torch.ones(1, len(xs), 1, 1, 1)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    (grad_loc,) = torch.autograd.grad(out.sum(), loc)
    slope = grad_loc[0, :, 0, 0, 0, 0] / width  # value[x0 + 1] - value[x0] = 2 * x0 + 1
    torch.testing.assert_close(slope, torch.tensor([2.0 * c + 1 for c in cells]), rtol=0, atol=1e-3)

