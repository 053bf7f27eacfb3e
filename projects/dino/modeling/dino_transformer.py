"""The DINO transformer (Zhang et al. 2023): Deformable DETR's encoder and decoder layers, query
selection from the encoder (mixed, Sec. 3.4), denoising queries in front of the matching ones
(Sec. 3.3) and look-forward-twice box refinement (Sec. 3.5).

Built on :mod:`projects.deformable_detr.modeling`: the encoder, the decoder layer, the
encoder-proposal generator and the parameter initialisation are Deformable DETR's. Parameter
names follow the official DINO code (``tgt_embed``, ``enc_out_class_embed``,
``enc_out_bbox_embed``, ``decoder.ref_point_head``, ``decoder.norm``) so converted checkpoints
load with a short table. Sequences are batch-first: (N, S, C).
"""
import math
from typing import List, NamedTuple, Optional

import torch
from torch import nn

from detrex_lite.layers import MLP, LevelLayout
from projects.deformable_detr.modeling import (
    DeformableTransformer,
    DeformableTransformerDecoderLayer,
    box_from_delta,
)

from .denoising import DenoisingQueries

__all__ = ["DINOTransformer", "DINOTransformerDecoder", "DINODecoderLayer", "DINOTransformerOutput", "box_sine_embed"]


def box_sine_embed(boxes: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of normalised boxes (DAB-DETR / DINO ``gen_sineembed_for_position``).

    Args:
        boxes: (N, Q, 4) normalised (cx, cy, w, h).
        num_pos_feats: channels per coordinate (d_model / 2).

    Returns:
        (N, Q, 4 * num_pos_feats) in the official order (y, x, w, h), each interleaved sin/cos.
    """
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = boxes.float()[..., None] * (2 * math.pi) / dim_t  # (N, Q, 4, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos[:, :, [1, 0, 2, 3]].flatten(2).to(boxes.dtype)


# Deformable DETR's decoder layer (same modules and names); its forward takes the denoising
# self-attention mask (``self_attn_mask``).
DINODecoderLayer = DeformableTransformerDecoderLayer


class DecoderOutput(NamedTuple):
    """hs: (K, N, Q, C) normalised outputs of the K layers asked for; references: K (N, Q, 4)
    the (detached) input reference boxes of those layers; boxes: (K, N, Q, 4) their predicted
    boxes, normalised (cx, cy, w, h)."""

    hs: torch.Tensor
    references: List[torch.Tensor]
    boxes: torch.Tensor


class DINOTransformerDecoder(nn.Module):
    """Box-refining decoder with conditional query positions (DAB-DETR) and look forward twice.

    Layer d's input reference r_{d-1} is always detached. Its refined box
    b_d = sigmoid(delta_d(o_d) + inverse_sigmoid(r_{d-1})) (o_d the raw layer output) becomes the
    next reference r_d = b_d.detach(). The box it is *supervised* with is
    sigmoid(delta_d(norm(o_d)) + inverse_sigmoid(x)) where x = b_{d-1} undetached with look
    forward twice (so layer d's loss also trains layer d-1's box prediction, Sec. 3.5) and
    x = r_{d-1} without (Deformable DETR's refinement); b_{d-1} and r_{d-1} have the same value, so
    the switch changes gradients only. (As official, the reference chain uses the raw output o_d,
    the supervised box the normalised one.)

    Args:
        num_layers: decoder layers.
        d_model: width; the query position of a box is ref_point_head(sine(box)), 2 * d_model ->
            d_model.
        look_forward_twice: as above.
        layer_kwargs: :class:`DINODecoderLayer` arguments.
    """

    def __init__(self, num_layers: int = 6, *, d_model: int = 256, look_forward_twice: bool = True, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DINODecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers))
        self.num_layers = num_layers
        self.d_model = d_model
        self.look_forward_twice = look_forward_twice
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, tgt, reference_points, src, layout: LevelLayout, valid_ratios, src_padding_mask=None, self_attn_mask=None,
        *, bbox_embed: nn.ModuleList, all_layers: bool = True,
    ) -> DecoderOutput:
        """
        Args:
            tgt: (N, Q, C) content queries.
            reference_points: (N, Q, 4) normalised boxes of the valid image (detached).
            src: (N, S, C) memory; layout: its levels; valid_ratios: (N, L, 2) (w, h).
            self_attn_mask: (Q, Q) bool, True = blocked (the denoising mask), or None.
            bbox_embed: one box head per layer (the detector's, passed at call time).
            all_layers: return every layer; False: only the last.
        """
        hs, references, boxes = [], [], []
        output = tgt
        previous = None  # b_{d-1}, undetached
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        for lid, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * ratios  # (N, Q, L, 4)
            query_pos = self.ref_point_head(box_sine_embed(ref_input[:, :, 0], self.d_model // 2))
            output = layer(output, query_pos, ref_input, src, layout, src_padding_mask, self_attn_mask)
            last = lid == self.num_layers - 1
            if all_layers or last:
                normed = self.norm(output)
                base = previous if (self.look_forward_twice and previous is not None) else reference_points
                hs.append(normed)
                references.append(reference_points)
                boxes.append(box_from_delta(bbox_embed[lid](normed), base))
            if not last:
                previous = box_from_delta(bbox_embed[lid](output), reference_points)
                reference_points = previous.detach()
        return DecoderOutput(torch.stack(hs), references, torch.stack(boxes))


class DINOTransformerOutput(NamedTuple):
    """What :class:`DINOTransformer` returns.

    hs, references, boxes: :class:`DecoderOutput` over the [denoising | matching] queries.
    enc_logits: (N, Q, K) the encoder class head on the Q selected tokens (when asked for).
    enc_boxes: (N, Q, 4) their boxes (undetached, for the encoder loss; when asked for).
    """

    hs: torch.Tensor
    references: List[torch.Tensor]
    boxes: torch.Tensor
    enc_logits: Optional[torch.Tensor] = None
    enc_boxes: Optional[torch.Tensor] = None


class DINOTransformer(DeformableTransformer):
    """Two-stage Deformable DETR transformer with DINO's query selection and decoder.

    Args:
        d_model, nhead, dim_feedforward, dropout, activation, num_encoder_layers,
            num_decoder_layers, num_feature_levels, enc_n_points, dec_n_points: as
            :class:`DeformableTransformer` (DINO: 256, 8, 2048, 0.0, relu, 6, 6, 4, 4, 4).
        num_queries: matching queries = encoder tokens selected (900).
        num_classes: K of the encoder class head (the tokens are ranked by their best class).
        mixed_selection: positional queries (anchors) from the selected tokens, content queries
            learned (``tgt_embed``); False: both from the selected tokens (pure query selection).
        look_forward_twice: see :class:`DINOTransformerDecoder`.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        activation: str = "relu",
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        num_queries: int = 900,
        num_classes: int = 80,
        mixed_selection: bool = True,
        look_forward_twice: bool = True,
    ):
        super().__init__(
            d_model=d_model, nhead=nhead, num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
            num_feature_levels=num_feature_levels, enc_n_points=enc_n_points, dec_n_points=dec_n_points,
            two_stage=True, two_stage_num_proposals=num_queries,
        )
        # DINO's query positions come from the reference boxes in every decoder layer
        # (ref_point_head), not from Deformable DETR's proposal embedding.
        del self.pos_trans, self.pos_trans_norm
        self.decoder = DINOTransformerDecoder(
            num_decoder_layers, d_model=d_model, look_forward_twice=look_forward_twice, d_ffn=dim_feedforward,
            dropout=dropout, activation=activation, n_levels=num_feature_levels, n_heads=nhead, n_points=dec_n_points,
        )
        self.num_queries = num_queries
        self.mixed_selection = mixed_selection
        self.look_forward_twice = look_forward_twice
        if mixed_selection:
            self.tgt_embed = nn.Embedding(num_queries, d_model)
        # The encoder's own heads (official: not shared with the decoder's); set by the detector's
        # initialisation like the decoder heads.
        self.enc_out_class_embed = nn.Linear(d_model, num_classes)
        self.enc_out_bbox_embed = MLP(d_model, d_model, 4, 3)
        self.reset_parameters()

    def forward(
        self,
        srcs: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
        *,
        bbox_embed: nn.ModuleList,
        denoising: Optional[DenoisingQueries] = None,
        all_layers: bool = True,
        encoder_outputs: bool = True,
    ) -> DINOTransformerOutput:
        """
        Args:
            srcs: L maps (N, C, H_l, W_l); masks: L (N, H_l, W_l) bool (True = padding);
            pos_embeds: L (N, C, H_l, W_l).
            bbox_embed: one box head per decoder layer.
            denoising: CDN queries put before the matching ones (training), or None.
            all_layers: return every decoder layer (auxiliary losses), else only the last.
            encoder_outputs: return the selected tokens' class logits and boxes (encoder loss).
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"DINOTransformer: got {len(srcs)} feature levels, expected num_feature_levels={self.num_feature_levels}")
        src_flatten = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask_flatten = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flatten = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos_embeds)], 1
        )
        layout = LevelLayout.from_features(srcs)
        valid_sizes = torch.stack(
            [torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], -1) for m in masks], 1
        ).to(torch.promote_types(src_flatten.dtype, torch.float32))
        valid_ratios = valid_sizes / layout.spatial_shapes.flip(-1)[None].to(valid_sizes)

        memory = self.encoder(src_flatten, layout, valid_sizes, pos_flatten, mask_flatten)

        # Query selection (Sec. 3.4): the top-Q tokens by their best class logit.
        c = memory.shape[-1]
        output_memory, output_proposals, valid = self.gen_encoder_output_proposals(memory, mask_flatten, layout, valid_sizes)
        enc_logits = self.enc_out_class_embed(output_memory)
        # Padded/invalid tokens are never selected (as in this project's Deformable DETR).
        score = enc_logits.max(-1)[0].masked_fill(~valid, float("-inf"))
        topk_idx = torch.topk(score, min(self.num_queries, score.shape[1]), dim=1)[1]
        selected = torch.gather(output_memory, 1, topk_idx[..., None].expand(-1, -1, c))
        topk_coords_unact = self.enc_out_bbox_embed(selected) + torch.gather(
            output_proposals, 1, topk_idx[..., None].expand(-1, -1, 4)
        )
        reference_points = topk_coords_unact.detach().sigmoid()
        if self.mixed_selection:  # content queries learned, anchors selected
            tgt = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)
        else:  # pure query selection: content from the selected tokens too
            tgt = selected.detach()
        attn_mask = None
        if denoising is not None:
            tgt = torch.cat([denoising.content.to(tgt.dtype), tgt], 1)
            reference_points = torch.cat([denoising.boxes.to(reference_points), reference_points], 1)
            attn_mask = denoising.attn_mask

        decoded = self.decoder(
            tgt, reference_points, memory, layout, valid_ratios, mask_flatten, attn_mask,
            bbox_embed=bbox_embed, all_layers=all_layers,
        )
        enc_topk_logits = enc_topk_boxes = None
        if encoder_outputs:
            enc_topk_logits = torch.gather(enc_logits, 1, topk_idx[..., None].expand(-1, -1, enc_logits.shape[-1]))
            enc_topk_boxes = topk_coords_unact.sigmoid()
        return DINOTransformerOutput(*decoded, enc_topk_logits, enc_topk_boxes)
