"""The Deformable DETR transformer (Zhu et al. 2021, Sec. 4.1 and A.4): feature flattening,
encoder, query generation (learned queries or two-stage proposals) and decoder.

Parameter names follow the official implementation (``level_embed``, ``reference_points``,
``enc_output``, ``pos_trans``, and the layers in :mod:`.deformable_layers`) so converted
checkpoints load with a short table. Sequences are batch-first: (N, S, C).
"""
import math
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detrex_lite.layers import LevelLayout, MultiScaleDeformableAttention

from .deformable_layers import DeformableTransformerDecoder, DeformableTransformerEncoder, inverse_sigmoid

__all__ = ["DeformableTransformer", "TransformerOutput"]


class TransformerOutput(NamedTuple):
    """What :class:`DeformableTransformer` returns.

    hs: (K, N, Q, C) decoder outputs of the K layers asked for (all, or the last one).
    references: K tensors (N, Q, 2 or 4), the references their boxes are relative to.
    boxes: (K, N, Q, 4) their boxes, normalised (cx, cy, w, h).
    enc_outputs_class: (N, S, K) proposal logits (two-stage, when asked for; else None).
    enc_outputs_coord_unact: (N, S, 4) proposal boxes before sigmoid (as enc_outputs_class;
        +inf at padded / invalid positions).
    """

    hs: torch.Tensor
    references: List[torch.Tensor]
    boxes: torch.Tensor
    enc_outputs_class: Optional[torch.Tensor] = None
    enc_outputs_coord_unact: Optional[torch.Tensor] = None


class DeformableTransformer(nn.Module):
    """Encoder + decoder with query generation (learned queries or two-stage proposals).

    Args:
        d_model, nhead, dim_feedforward, dropout, activation: layer sizes (paper: 256, 8, 1024, 0.1, relu).
        num_encoder_layers, num_decoder_layers: 6 and 6 in the paper.
        num_feature_levels: L (4 multi-scale, 1 single-scale).
        enc_n_points, dec_n_points: K sampling points per head and level (4).
        two_stage: generate the queries from the top-scoring encoder proposals (Sec. 4.1).
        two_stage_num_proposals: how many proposals become queries (= num_queries).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        layer = dict(d_model=d_model, d_ffn=dim_feedforward, dropout=dropout, activation=activation, n_levels=num_feature_levels, n_heads=nhead)
        self.encoder = DeformableTransformerEncoder(num_encoder_layers, n_points=enc_n_points, **layer)
        self.decoder = DeformableTransformerDecoder(num_decoder_layers, n_points=dec_n_points, **layer)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self):
        # Official: xavier for all matrices, then the deformable attention's own init.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def get_proposal_pos_embed(proposals: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
        """(N, Q, 4) unnormalised (pre-sigmoid) boxes -> (N, Q, 4 * num_pos_feats) sine embedding."""
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = proposals.sigmoid() * scale
        pos = pos[:, :, :, None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(self, memory, memory_padding_mask, layout: LevelLayout, valid_sizes):
        """One proposal per encoder token: its pixel centre with size 0.05 * 2^level (Sec. A.4).

        Returns:
            output_memory: (N, S, C) memory after enc_output + norm (zero at padded/invalid tokens
                before the projection, as official).
            output_proposals: (N, S, 4) inverse-sigmoid boxes, +inf at padded/invalid tokens.
            valid: (N, S) bool, tokens whose proposal is usable.
        """
        n = memory.shape[0]
        proposals = []
        for lvl, (h, w) in enumerate(layout.sizes):
            grid_y, grid_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], -1)[None] + 0.5  # (1, H, W, 2)
            grid = grid / valid_sizes[:, lvl].view(n, 1, 1, 2)
            wh = torch.full_like(grid, 0.05 * 2.0**lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
        output_proposals = torch.cat(proposals, 1)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1)
        if memory_padding_mask is not None:
            valid = valid & ~memory_padding_mask
        output_proposals = inverse_sigmoid(output_proposals).masked_fill(~valid[..., None], float("inf"))
        output_memory = memory.masked_fill(~valid[..., None], 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals, valid

    def forward(
        self,
        srcs: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: List[torch.Tensor],
        query_embed: Optional[torch.Tensor] = None,
        *,
        bbox_embed: nn.ModuleList,
        refine: bool = False,
        proposal_heads: Optional[Tuple[nn.Linear, nn.Module]] = None,
        all_layers: bool = True,
        encoder_outputs: bool = True,
    ) -> TransformerOutput:
        """
        Args:
            srcs: L maps (N, C, H_l, W_l); masks: L (N, H_l, W_l) bool (True = padding);
            pos_embeds: L (N, C, H_l, W_l).
            query_embed: (Q, 2C) learned (query_pos | tgt) embeddings (one-stage only).
            bbox_embed: one box head per decoder layer; refine: iterative box refinement.
            proposal_heads: (class head, box head) scoring the encoder proposals (two-stage only).
            all_layers: return every decoder layer (auxiliary losses), else only the last.
            encoder_outputs: return the two-stage proposal logits and boxes of every token (the
                encoder loss); else only the proposals' objectness and the selected boxes are
                computed.
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"DeformableTransformer: got {len(srcs)} feature levels, expected num_feature_levels={self.num_feature_levels}")
        src_flatten, mask_flatten, pos_flatten = [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        mask_flatten = torch.cat(mask_flatten, 1)
        pos_flatten = torch.cat(pos_flatten, 1)
        # Built once from the maps' shapes and passed to every layer: nothing reads it back.
        layout = LevelLayout.from_features(srcs)
        # Valid (w, h) of every level from the exact masks, and their ratio to the padded size.
        valid_sizes = torch.stack(
            [torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], -1) for m in masks], 1
        ).to(torch.promote_types(src_flatten.dtype, torch.float32))  # float32 also for a 16-bit model
        valid_ratios = valid_sizes / layout.spatial_shapes.flip(-1)[None].to(valid_sizes)

        memory = self.encoder(src_flatten, layout, valid_sizes, pos_flatten, mask_flatten)

        bs, _, c = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            if proposal_heads is None:
                raise ValueError("DeformableTransformer: two-stage needs proposal_heads=(class head, box head)")
            class_head, box_head = proposal_heads
            output_memory, output_proposals, valid = self.gen_encoder_output_proposals(memory, mask_flatten, layout, valid_sizes)
            if encoder_outputs:
                enc_outputs_class = class_head(output_memory)
                enc_outputs_coord_unact = box_head(output_memory) + output_proposals
                objectness = enc_outputs_class[..., 0]
            else:  # the selection only needs the first class's logit
                objectness = F.linear(output_memory.to(class_head.weight.dtype), class_head.weight[:1], class_head.bias[:1])[..., 0]
            # Unlike the official code, padded/invalid tokens can never be selected, so the
            # selection does not depend on how much padding the batch has.
            objectness = objectness.masked_fill(~valid, float("-inf"))
            topk = min(self.two_stage_num_proposals, objectness.shape[1])
            topk_idx = torch.topk(objectness, topk, dim=1)[1]
            if encoder_outputs:
                topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_idx[..., None].expand(-1, -1, 4))
            else:  # box head on the selected tokens only
                selected = torch.gather(output_memory, 1, topk_idx[..., None].expand(-1, -1, c))
                topk_coords_unact = box_head(selected) + torch.gather(
                    output_proposals, 1, topk_idx[..., None].expand(-1, -1, 4)
                )
            topk_coords_unact = topk_coords_unact.detach()
            reference_points = topk_coords_unact.sigmoid()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact, c // 2)))
            query_pos, tgt = torch.split(pos_trans_out, c, dim=2)
        else:
            if query_embed is None:
                raise ValueError("DeformableTransformer: one-stage needs query_embed (Q, 2C)")
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos[None].expand(bs, -1, -1)
            tgt = tgt[None].expand(bs, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()

        decoded = self.decoder(
            tgt, reference_points, memory, layout, valid_ratios, query_pos, mask_flatten,
            bbox_embed=bbox_embed, refine=refine, all_layers=all_layers,
        )
        return TransformerOutput(*decoded, enc_outputs_class, enc_outputs_coord_unact)
