"""Inputs of the multi-scale deformable attention benchmark (:mod:`detrex_lite.layers.ops_benchmark`):
the named shapes, realistic / uniform / out-of-bounds sampling locations, and the bytes that any
implementation must move (R = the value rows a bilinear corner inside the map lands on)."""
import dataclasses
import math
from typing import Optional, Tuple

import torch

__all__ = ["DTYPES", "E1_LEVELS", "SHAPES", "ALL_GPU_SHAPES", "OpShape", "bytes_moved", "cast_inputs", "input_dtypes",
           "make_inputs", "out_of_bounds_mask", "touched_value_rows"]

E1_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))


@dataclasses.dataclass(frozen=True)
class OpShape:
    batch: int
    levels: Tuple[Tuple[int, int], ...]
    num_queries: Optional[int] = None  # None: encoder, one query per value position (Lq = S)
    num_heads: int = 8
    head_dim: int = 32
    num_points: int = 4
    locations: str = "realistic"  # or "uniform"
    extra_out_of_bounds: Optional[float] = None  # this fraction of all samples moved outside the maps


SHAPES = {
    "E1": OpShape(2, E1_LEVELS),
    "E2": OpShape(1, ((100, 150), (50, 75), (25, 38), (13, 19))),
    "E3": OpShape(8, ((128, 128), (64, 64), (32, 32), (16, 16))),
    "D1": OpShape(2, E1_LEVELS, num_queries=300),
    "D2": OpShape(2, E1_LEVELS, num_queries=900),
    "R_uniform": OpShape(2, E1_LEVELS, locations="uniform"),
    "R_oob10": OpShape(2, E1_LEVELS, extra_out_of_bounds=0.1),
    "R_D64": OpShape(2, E1_LEVELS, head_dim=64),
    "R_P8": OpShape(2, E1_LEVELS, num_points=8),
    "R_D48": OpShape(2, E1_LEVELS, head_dim=48),
    "tiny": OpShape(1, ((8, 12), (4, 6), (2, 3), (1, 2))),
}
ALL_GPU_SHAPES = "E1,E2,E3,D1,D2,R_uniform,R_oob10,R_D64,R_P8,R_D48"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

def _level_offsets(levels):
    areas = torch.tensor([h * w for h, w in levels], dtype=torch.int64)
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]]), int(areas.sum())


def out_of_bounds_mask(locations, levels):
    """(N, Lq, M, L, P) bool: True where all four bilinear corners of a sample lie outside its map,
    i.e. grid_sample (zeros padding, align_corners=False) returns 0 for it."""
    masks = []
    for lvl, (h, w) in enumerate(levels):
        x = locations[:, :, :, lvl, :, 0].double() * w - 0.5
        y = locations[:, :, :, lvl, :, 1].double() * h - 0.5
        masks.append((x <= -1) | (x >= w) | (y <= -1) | (y >= h))
    return torch.stack(masks, dim=3)


def make_inputs(name, device, dtype, seed=0):
    """value (N,S,M,D), spatial_shapes (L,2), level_start_index (L,), sampling_locations
    (N,Lq,M,L,P,2) normalised (x, y), attention_weights (N,Lq,M,L,P)."""
    shape = SHAPES[name]
    levels, heads, points = shape.levels, shape.num_heads, shape.num_points
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64)
    level_start_index, num_value = _level_offsets(levels)
    num_levels = len(levels)
    if shape.num_queries is None:  # encoder: one query per pixel, at the pixel centre
        refs = []
        for h, w in levels:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            refs.append(torch.stack([xs, ys], -1).reshape(-1, 2))
        ref = torch.cat(refs).expand(shape.batch, -1, -1)
    else:  # decoder: learned reference points, spread over the image
        ref = torch.rand(shape.batch, shape.num_queries, 2, generator=g)
    num_queries = ref.shape[1]
    sample_shape = (shape.batch, num_queries, heads, num_levels, points, 2)
    if shape.locations == "uniform":
        locations = torch.rand(sample_shape, generator=g)
    else:
        # The module's initial offsets: a ring of directions, point k at distance k + 1 pixels.
        angles = torch.arange(heads) * (2 * math.pi / heads)
        ring = torch.stack([angles.cos(), angles.sin()], -1)
        ring = ring / ring.abs().max(-1, keepdim=True).values
        offsets = ring[:, None, None, :] * torch.arange(1, points + 1).view(1, 1, -1, 1)  # (M, 1, P, 2)
        offsets = offsets + 0.5 * torch.randn(sample_shape, generator=g)
        normalizer = torch.tensor([[w, h] for h, w in levels], dtype=torch.float32)  # (L, 2) as (x, y)
        locations = ref[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
    if shape.extra_out_of_bounds is not None:
        locations = _push_out_of_bounds(locations, levels, shape.extra_out_of_bounds, g)
    weights = torch.randn(shape.batch, num_queries, heads, num_levels * points, generator=g).softmax(-1)
    weights = weights.view(shape.batch, num_queries, heads, num_levels, points)
    value = torch.randn(shape.batch, num_value, heads, shape.head_dim, generator=g)
    to = dict(device=device, dtype=dtype)
    return (
        value.to(**to), spatial_shapes.to(device), level_start_index.to(device),
        locations.to(**to), weights.to(**to),
    )


def _push_out_of_bounds(locations, levels, fraction, generator):
    """Moves `fraction` of all samples, chosen at random among those inside the maps, outside
    every map (x in [-1.5, -1] or [2, 2.5]: no bilinear corner is inside for any map size)."""
    outside = out_of_bounds_mask(locations, levels).flatten()
    wanted = round(fraction * outside.numel())
    inside = (~outside).nonzero().squeeze(1)
    chosen = inside[torch.randperm(inside.numel(), generator=generator)[:wanted]]
    u = torch.rand(wanted, generator=generator)
    x = torch.where(torch.rand(wanted, generator=generator) < 0.5, -1.0 - 0.5 * u, 2.0 + 0.5 * u)
    flat = locations.reshape(-1, 2).clone()
    flat[chosen, 0] = x
    return flat.view_as(locations)


def touched_value_rows(value, spatial_shapes, level_start_index, locations):
    """R: the number of distinct (n, m, s) value rows that some in-map bilinear corner reads."""
    n, s, m, _ = value.shape
    touched = torch.zeros(n * s * m, dtype=torch.bool, device=value.device)
    batch_idx = torch.arange(n, device=value.device).view(n, 1, 1, 1)
    head_idx = torch.arange(m, device=value.device).view(1, 1, m, 1)
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        start = int(level_start_index[lvl])
        x = locations[:, :, :, lvl, :, 0].double() * w - 0.5  # (N, Lq, M, P)
        y = locations[:, :, :, lvl, :, 1].double() * h - 0.5
        x0, y0 = x.floor().long(), y.floor().long()
        for dx in (0, 1):
            for dy in (0, 1):
                xc, yc = x0 + dx, y0 + dy
                ok = (xc >= 0) & (xc < w) & (yc >= 0) & (yc < h)
                pos = start + yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)
                row = (batch_idx * s + pos) * m + head_idx
                touched[row[ok]] = True
    return int(touched.sum())


def bytes_moved(value, locations, touched_rows, weights=None):
    """Minimum bytes for forward and backward (FLOOR_FORMULA), in the inputs' dtypes (`weights`
    only for its dtype; without it the weights are taken to have the locations' dtype). The
    location and weight gradients have their inputs' dtypes."""
    e = value.element_size()
    per_sample = 2 * locations.element_size() + (weights if weights is not None else locations).element_size()
    n, s, m, d = value.shape
    _, lq, _, l, p, _ = locations.shape
    samples = n * lq * m * l * p
    out = n * lq * m * d
    forward = e * (out + touched_rows * d) + per_sample * samples
    backward = e * (out + touched_rows * d + n * s * m * d) + 2 * per_sample * samples
    return {"forward": forward, "backward": backward, "forward_backward": forward + backward}


def input_dtypes(impl, dtype):
    """dtypes of (value, sampling_locations, attention_weights) that `impl` gets in a `dtype` row:
    the native operator takes float32 locations and weights next to a 16-bit value, as a model
    under AMP passes them; the reference (grid_sample) needs one dtype."""
    sample_dtype = torch.float32 if impl == "native" and dtype in (torch.float16, torch.bfloat16) else dtype
    return {"value": dtype, "sampling_locations": sample_dtype, "attention_weights": sample_dtype}


def cast_inputs(inputs, dtypes):
    """`inputs` (make_inputs' tuple) with value, locations and weights cast to `dtypes`."""
    value, spatial_shapes, level_start_index, locations, weights = inputs
    return (
        value.to(dtypes["value"]), spatial_shapes, level_start_index,
        locations.to(dtypes["sampling_locations"]), weights.to(dtypes["attention_weights"]),
    )
