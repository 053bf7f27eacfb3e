"""Encoder and decoder of Deformable DETR (Zhu et al. 2021, Sec. 4.1), official parameter names.

Sequences are batch-first: (N, S, C). Reference points are normalised (x, y) or (cx, cy, w, h)
in [0, 1] of each level's padded map (the caller scales the valid-image ones by valid ratios).
"""
from typing import List, NamedTuple, Optional

import torch
from torch import nn

from detrex_lite.layers import LevelLayout, MultiScaleDeformableAttention, with_pos_embed

__all__ = [
    "DeformableTransformerEncoderLayer",
    "DeformableTransformerEncoder",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerDecoder",
    "DecoderOutput",
    "box_from_delta",
    "inverse_sigmoid",
]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [eps, 1 - eps] (the official helper)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def box_from_delta(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A box head's output relative to a reference: sigmoid(delta + inverse_sigmoid(reference)).

    Args:
        delta: (..., 4) box head output (pre-sigmoid offsets of cx, cy, w, h).
        reference: (..., 4) normalised boxes, or (..., 2) points (then w, h are delta's alone).

    Returns:
        (..., 4) normalised (cx, cy, w, h).
    """
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be 'relu' or 'gelu', got {name!r}")


class DeformableTransformerEncoderLayer(nn.Module):
    """Multi-scale deformable self-attention + FFN, post-norm (official layout)."""

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dim=d_model, num_heads=n_heads, num_levels=n_levels, num_points=n_points,
            dropout=0.0, batch_first=True, add_identity=False,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, layout: LevelLayout, padding_mask=None):
        """src, pos: (N, S, C); reference_points: (N, S, L, 2) normalised; padding_mask (N, S)."""
        attn = self.self_attn(
            query=src, value=src, query_pos=pos, key_padding_mask=padding_mask,
            reference_points=reference_points, layout=layout,
        )
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, num_layers: int = 6, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(layout: LevelLayout, valid_sizes: torch.Tensor) -> torch.Tensor:
        """Pixel centres of every level, normalised by the valid size of their own level, then
        expressed in every level's padded coordinates.

        Args:
            layout: the padded maps' (H_l, W_l).
            valid_sizes: (N, L, 2) float (valid W_l, valid H_l).

        Returns:
            (N, S, L, 2) reference points (x, y) in [0, 1] of each level's padded map.
        """
        refs = []
        device = valid_sizes.device
        for lvl, (h, w) in enumerate(layout.sizes):
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_x = ref_x.reshape(-1)[None] / valid_sizes[:, None, lvl, 0]
            ref_y = ref_y.reshape(-1)[None] / valid_sizes[:, None, lvl, 1]
            refs.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(refs, 1)
        valid_ratios = valid_sizes / layout.spatial_shapes.flip(-1)[None].to(valid_sizes)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, layout: LevelLayout, valid_sizes, pos=None, padding_mask=None):
        """src, pos: (N, S, C); valid_sizes: (N, L, 2) (valid W_l, H_l); padding_mask: (N, S)."""
        reference_points = self.get_reference_points(layout, valid_sizes)
        for layer in self.layers:
            src = layer(src, pos, reference_points, layout, padding_mask)
        return src


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention (nn.MultiheadAttention) -> deformable cross-attention -> FFN, post-norm.

    Official naming: ``norm2`` follows the self-attention, ``norm1`` the cross-attention.
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dim=d_model, num_heads=n_heads, num_levels=n_levels, num_points=n_points,
            dropout=0.0, batch_first=True, add_identity=False,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt, query_pos, reference_points, src, layout: LevelLayout, src_padding_mask=None, self_attn_mask=None
    ):
        """tgt, query_pos: (N, Q, C); reference_points: (N, Q, L, 2 or 4); src: (N, S, C);
        self_attn_mask: (Q, Q) bool, True = may not attend (None: full attention; a detector with
        denoising queries passes its attention mask)."""
        q = k = with_pos_embed(tgt, query_pos)
        attn = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        attn = self.cross_attn(
            query=tgt, value=src, query_pos=query_pos, key_padding_mask=src_padding_mask,
            reference_points=reference_points, layout=layout,
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DecoderOutput(NamedTuple):
    """What :class:`DeformableTransformerDecoder` returns for the K layers asked for (every
    layer, or only the last one).

    hs: (K, N, Q, C) the layers' output states.
    references: K tensors (N, Q, 2 or 4), the reference each layer's boxes are relative to (its
        input reference points: the initial ones, or with refinement the previous layer's boxes;
        one-stage initial references are points, refined ones boxes).
    boxes: (K, N, Q, 4) the layers' boxes, normalised (cx, cy, w, h):
        ``box_from_delta(bbox_embed[l](hs[l]), references[l])``.
    """

    hs: torch.Tensor
    references: List[torch.Tensor]
    boxes: torch.Tensor


class DeformableTransformerDecoder(nn.Module):
    """Stack of decoder layers; applies the detector's box heads, each once.

    With ``refine`` (box refinement, Sec. 4.1 "Iterative Bounding Box Refinement") each layer's
    box head refines the references: r_{d} = sigmoid(delta_d + inverse_sigmoid(r_{d-1})),
    detached before being fed to the next layer; layer d's predicted boxes are r_d itself.
    """

    def __init__(self, num_layers: int = 6, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableTransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers

    def forward(
        self, tgt, reference_points, src, layout: LevelLayout, valid_ratios, query_pos=None, src_padding_mask=None,
        *, bbox_embed: nn.ModuleList, refine: bool = False, all_layers: bool = True,
    ) -> DecoderOutput:
        """
        Args:
            tgt, query_pos: (N, Q, C).
            reference_points: (N, Q, 2) or (N, Q, 4) normalised (cx, cy[, w, h]) of the valid image.
            src: (N, S, C) encoder memory; layout: its levels; valid_ratios: (N, L, 2) (w, h)
                valid / padded size.
            bbox_embed: one box head per layer (the detector's ``bbox_embed.{i}``: passing them
                here instead of registering them twice keeps each parameter under one name).
            refine: iterative box refinement.
            all_layers: return every layer (auxiliary losses); False: only the last layer, and
                without refinement only its box head runs.
        """
        hs, references, boxes = [], [], []
        output = tgt
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, src, layout, src_padding_mask)
            keep = all_layers or lid == self.num_layers - 1
            if keep or refine:
                box = box_from_delta(bbox_embed[lid](output), reference_points)
            if keep:
                hs.append(output)
                references.append(reference_points)
                boxes.append(box)
            if refine:
                reference_points = box.detach()
        return DecoderOutput(torch.stack(hs), references, torch.stack(boxes))
