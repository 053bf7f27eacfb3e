"""A module for tracing one MultiScaleDeformableAttention call whose level layout is fixed
(the export and FLOP-count tests trace the attention alone, with three tensor inputs)."""
import torch


class FixedLayoutCall(torch.nn.Module):
    """``forward(query, value, reference_points)`` calls ``attn`` with the given layout.

    Args:
        attn: a MultiScaleDeformableAttention.
        spatial_shapes: (L, 2) int64 (H_l, W_l) of each level.
        level_start_index: (L,) int64 offset of each level in the flattened value.
    """

    def __init__(self, attn: torch.nn.Module, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor):
        super().__init__()
        self.attn = attn
        self.spatial_shapes = spatial_shapes
        self.level_start_index = level_start_index

    def forward(self, query: torch.Tensor, value: torch.Tensor, reference_points: torch.Tensor) -> torch.Tensor:
        """query: (N, Lq, C); value: (N, S, C); reference_points: (N, Lq, L, 2) normalised."""
        return self.attn(
            query, value=value, reference_points=reference_points,
            spatial_shapes=self.spatial_shapes, level_start_index=self.level_start_index,
        )
