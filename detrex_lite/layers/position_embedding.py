"""Sine position embedding of DETR (Carion et al. 2020, Sec. A.4) computed from a padding mask."""
import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "with_pos_embed"]


def with_pos_embed(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    """``x + pos``, or ``x`` when there is no position embedding (same shape, e.g. (N, S, C))."""
    return x if pos is None else x + pos


class PositionEmbeddingSine(nn.Module):
    """2D sine/cosine embedding of the (y, x) position of each valid pixel.

    Positions are cumulative counts over the valid (non-padded) pixels, so the embedding of a
    pixel does not depend on how much padding follows it.

    Args:
        embed_dim: output channels (the transformer's d_model, even): half encode y (first), half
            x; ``num_pos_feats = embed_dim // 2`` per axis in the official naming.
        temperature: the wavelength base of the sinusoids.
        normalize: divide positions by the valid extent and multiply by ``scale``.
        scale: the range of normalised positions (2*pi in both official codebases).
        offset: added to the positions before normalising: 0.0 in DETR, -0.5 in Deformable DETR
            (pixel centres).
        eps: added to the valid extent to avoid division by zero.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
        eps: float = 1e-6,
    ):
        super().__init__()
        if embed_dim <= 0 or embed_dim % 2:
            raise ValueError(f"PositionEmbeddingSine: embed_dim must be a positive even number, got {embed_dim}")
        self.num_pos_feats = embed_dim // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.offset = offset
        self.eps = eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            mask: (N, H, W) bool, True at padded pixels.

        Returns:
            (N, 2 * num_pos_feats, H, W) float32 embedding (zeros are not forced at padding).
        """
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        # Interleave sin (even channels) and cos (odd channels) as the official code does.
        n, h, w = mask.shape
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).view(n, h, w, -1)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).view(n, h, w, -1)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).contiguous()

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale:.4f}, offset={self.offset}"
        )
