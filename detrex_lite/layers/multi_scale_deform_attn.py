"""The multi-scale deformable attention module of Deformable DETR (Zhu et al. 2021, sec. 4.1)."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import nn

from .level_layout import LevelLayout
from .ms_deform_attn_function import BACKENDS, OpExtension, autocast_enabled, ms_deform_attn_with_layout
from .position_embedding import with_pos_embed

__all__ = ["MultiScaleDeformableAttention", "attention_backend"]


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"MultiScaleDeformableAttention: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` sampled positions per head and per feature level
    around its reference point (eq. 3 of the paper).

    Parameter names follow the official implementation (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``) so checkpoints convert by name.

    Args:
        embed_dim: channels C of queries and values; must be divisible by ``num_heads``.
        num_heads: attention heads M.
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
        im2col_step: kept for compatibility with the official module; changes nothing.
        dropout: dropout on the output before the residual (only with ``add_identity``).
        batch_first: queries/values are (N, Lq, C) when True, (Lq, N, C) when False.
        add_identity: return ``identity + dropout(output_proj(out))``; when False return
            ``output_proj(out)`` (for layers that add their own residual and dropout).
        backend: how the sampling runs: "auto" (the compiled operator when it is built for the
            input's device, else the pure-PyTorch reference with a one-time warning),
            "compiled" (the operator, or an error) or "pytorch" (the ``grid_sample`` reference,
            standard ops only: what tracing and ONNX export need). Not saved in checkpoints;
            switch a whole model with :func:`attention_backend`.
        extension: the compiled operator (:class:`~detrex_lite.layers.ms_deform_attn_function.OpExtension`);
            None: the one this process loaded (tests inject one that is not built).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        im2col_step: int = 64,
        dropout: float = 0.1,
        batch_first: bool = True,
        add_identity: bool = True,
        backend: str = "auto",
        extension: Optional[OpExtension] = None,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.batch_first = batch_first
        self.add_identity = add_identity
        self.backend = _check_backend(backend)
        self.extension = extension  # None: the compiled operator this process loaded

        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Paper initialisation: offsets start on a ring of ``num_heads`` directions (head h
        points at angle 2*pi*h/M, scaled so the larger coordinate is 1), point k at distance
        k + 1, the same on every level; attention starts uniform; projections xavier."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2) as (x, y)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1) * scale
        self.sampling_offsets.bias.copy_(bias.flatten().to(self.sampling_offsets.bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        identity: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        reference_points: Optional[torch.Tensor] = None,
        spatial_shapes: Optional[torch.Tensor] = None,
        level_start_index: Optional[torch.Tensor] = None,
        layout: Optional[LevelLayout] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C), or (Lq, N, C) when not ``batch_first``.
            key: unused; kept so callers written for other attention modules work.
            value: (N, S, C) (or (S, N, C)), the flattened levels; defaults to ``query``.
            identity: the residual added to the output; defaults to ``query`` (before
                ``query_pos`` is added).
            query_pos: positional embedding added to ``query`` before the projections.
            key_padding_mask: (N, S) bool, True where ``value`` is padding (zeroed).
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1], or (N, Lq, L, 4)
                normalised boxes (cx, cy, w, h).
            layout: the levels of ``value``'s S axis, built once per forward by the model
                (:meth:`LevelLayout.from_features`): nothing is read back from the device.
            spatial_shapes, level_start_index: instead of ``layout``, raw (L, 2) / (L,) int64
                tensors as in the official module; their values are read and checked on every
                call (a host-device synchronisation on a GPU).

        Returns:
            Same layout as ``query``: ``identity + dropout(output_proj(out))`` when
            ``add_identity``, else ``output_proj(out)``.
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        query = with_pos_embed(query, query_pos)
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        if layout is None:
            if spatial_shapes is None or level_start_index is None:
                raise ValueError("MultiScaleDeformableAttention: give layout (or spatial_shapes and level_start_index)")
            layout = LevelLayout.from_tensors(spatial_shapes, level_start_index, caller="MultiScaleDeformableAttention")
        if reference_points is None:
            raise ValueError("MultiScaleDeformableAttention: reference_points are required")
        spatial_shapes = layout.spatial_shapes

        n, num_queries, _ = query.shape
        _, num_value, _ = value.shape
        m, num_levels, num_points = self.num_heads, self.num_levels, self.num_points

        value = self.value_proj(value)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (n, num_value):
                raise ValueError(
                    f"key_padding_mask must be (N, S) = ({n}, {num_value}), got {tuple(key_padding_mask.shape)}"
                )
            # In place: value is value_proj's fresh output, which autograd does not keep.
            value = value.masked_fill_(key_padding_mask[..., None], 0.0)
        value = value.view(n, num_value, m, self.embed_dim // m)

        offsets = self.sampling_offsets(query)
        weights = self.attention_weights(query).view(n, num_queries, m, num_levels * num_points)
        weights = weights.softmax(-1).view(n, num_queries, m, num_levels, num_points)

        if reference_points.shape[-1] == 2:
            sampling_locations = self.point_locations(reference_points, offsets, spatial_shapes)
        elif reference_points.shape[-1] == 4:
            # Offsets are fractions of the reference box's half size.
            offsets = offsets.view(n, num_queries, m, num_levels, num_points, 2)
            sampling_locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 (points) or 4 (boxes), got shape {tuple(reference_points.shape)}"
            )

        if not autocast_enabled(value.device):
            # Locations and weights in float32 even for a float16/bfloat16 module (a 16-bit
            # location is off by up to a third of a pixel on a large map), float64 for a float64
            # one. Under autocast ms_deform_attn applies its own rule.
            sample_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
            sampling_locations = sampling_locations.to(sample_dtype)
            weights = weights.to(sample_dtype)
        out = ms_deform_attn_with_layout(
            value, layout, sampling_locations, weights, self.im2col_step, self.backend, extension=self.extension
        )
        out = self.output_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not self.add_identity:
            return out
        return identity + self.dropout(out)

    def point_locations(
        self, reference_points: torch.Tensor, offsets: torch.Tensor, spatial_shapes: torch.Tensor
    ) -> torch.Tensor:
        """Sampling locations around point references: ``reference + offset / (W_l, H_l)``
        (offsets are in pixels of each level).

        For float32 / float64 offsets the result equals broadcasting
        ``reference_points[:, :, None, :, None, :]`` against ``offsets / normalizer`` bit for bit,
        but it is computed as a gather of the references into the offsets' column order and
        elementwise work over rows of M*L*P*2 contiguous values: broadcasting over a last axis of
        2 runs ~8x slower on CPU (~5 ms instead of ~55 ms per encoder layer at 800x1333, 2 threads).
        16-bit offsets are divided in the references' dtype (float32), not rounded to 16 bits first.

        Args:
            reference_points: (N, Lq, L, 2) normalised (x, y).
            offsets: (N, Lq, M*L*P*2) the ``sampling_offsets`` output, columns ordered (M, L, P, 2).
            spatial_shapes: (L, 2) int64 (H_l, W_l).

        Returns:
            (N, Lq, M, L, P, 2) in the dtype of ``reference_points`` (float32 also for 16-bit offsets).
        """
        n, num_queries = offsets.shape[:2]
        m, num_levels, num_points = self.num_heads, self.num_levels, self.num_points
        # Column c of the offsets belongs to (level l, axis a); it reads reference column 2 * l + a.
        columns = torch.arange(2 * num_levels, device=offsets.device).view(1, num_levels, 1, 2)
        columns = columns.expand(m, num_levels, num_points, 2).reshape(1, -1)
        normalizer = spatial_shapes.flip(-1).to(reference_points.dtype).view(1, num_levels, 1, 2)
        normalizer = normalizer.expand(m, num_levels, num_points, 2).reshape(-1)
        refs = reference_points.reshape(n * num_queries, 2 * num_levels)
        locations = torch.gather(refs, 1, columns.expand(n * num_queries, -1))
        locations += offsets.reshape(n * num_queries, -1) / normalizer  # (not addcdiv_: ONNX has no such op)
        return locations.view(n, num_queries, m, num_levels, num_points, 2)


@contextlib.contextmanager
def attention_backend(model: nn.Module, backend: str) -> Iterator[nn.Module]:
    """Runs every :class:`MultiScaleDeformableAttention` in ``model`` with ``backend`` inside
    the block and restores each module's previous backend on exit (also on an exception).

    Example (what ONNX export does: standard ops instead of the compiled operator)::

        with attention_backend(model, "pytorch"):
            torch.onnx.export(model, ...)

    Args:
        model: any module; those without deformable attention are left as they are.
        backend: "auto", "compiled" or "pytorch" (see :class:`MultiScaleDeformableAttention`).
    """
    _check_backend(backend)
    modules = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    previous = [m.backend for m in modules]
    for m in modules:
        m.backend = backend
    try:
        yield model
    finally:
        for m, b in zip(modules, previous):
            m.backend = b
