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

from detrex_lite.layers import MultiScaleDeformableAttention
from detrex_lite.layers.ms_deform_attn_function import level_layout, level_shapes

from .deformable_layers import DeformableTransformerDecoder, DeformableTransformerEncoder, inverse_sigmoid

__all__ = ["DeformableTransformer", "TransformerOutput"]


class TransformerOutput(NamedTuple):
    """What :class:`DeformableTransformer` returns.

    hs: (num_decoder_layers, N, Q, C) decoder outputs.
    init_reference: (N, Q, 2) one-stage / (N, Q, 4) two-stage normalised references of layer 0.
    inter_references: (num_decoder_layers, N, Q, 2 or 4) references after each layer.
    enc_outputs_class: (N, S, K) proposal logits (two-stage only, else None).
    enc_outputs_coord_unact: (N, S, 4) proposal boxes before sigmoid (two-stage only, else None;
        +inf at padded / invalid positions).
    """

    hs: torch.Tensor
    init_reference: torch.Tensor
    inter_references: torch.Tensor
    enc_outputs_class: Optional[torch.Tensor] = None
    enc_outputs_coord_unact: Optional[torch.Tensor] = None


def _level_layout(srcs: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``spatial_shapes`` (L, 2) int64 (H_l, W_l) of the maps ``srcs`` (N, C, H_l, W_l) and
    ``level_start_index`` (L,), on their device.

    Eager: built from the host-side sizes with :func:`level_layout`, so no layer ever reads them
    back from the GPU. While tracing, the sizes are traced values (``torch.as_tensor`` of them
    would be recorded as constants of the export size), so that an ONNX graph with a dynamic
    image size stays valid.
    """
    if not torch.jit.is_tracing():
        return level_layout([tuple(src.shape[-2:]) for src in srcs], srcs[0].device)
    spatial_shapes = torch.stack([torch.stack(list(src.shape[-2:])) for src in srcs]).to(srcs[0].device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    return spatial_shapes, level_start_index


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

    def gen_encoder_output_proposals(self, memory, memory_padding_mask, spatial_shapes, valid_sizes):
        """One proposal per encoder token: its pixel centre with size 0.05 * 2^level (Sec. A.4).

        Returns:
            output_memory: (N, S, C) memory after enc_output + norm (zero at padded/invalid tokens
                before the projection, as official).
            output_proposals: (N, S, 4) inverse-sigmoid boxes, +inf at padded/invalid tokens.
            valid: (N, S) bool, tokens whose proposal is usable.
        """
        n = memory.shape[0]
        proposals = []
        for lvl, (h, w) in enumerate(level_shapes(spatial_shapes)):
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
        bbox_embed: Optional[nn.ModuleList] = None,
        proposal_heads: Optional[Tuple[nn.Module, nn.Module]] = None,
    ) -> TransformerOutput:
        """
        Args:
            srcs: L maps (N, C, H_l, W_l); masks: L (N, H_l, W_l) bool (True = padding);
            pos_embeds: L (N, C, H_l, W_l).
            query_embed: (Q, 2C) learned (query_pos | tgt) embeddings (one-stage only).
            bbox_embed: per-decoder-layer box heads for iterative refinement, or None.
            proposal_heads: (class head, box head) scoring the encoder proposals (two-stage only).
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
        spatial_shapes, level_start_index = _level_layout(srcs)
        # Valid (w, h) of every level from the exact masks, and their ratio to the padded size.
        valid_sizes = torch.stack(
            [torch.stack([(~m[:, 0, :]).sum(1), (~m[:, :, 0]).sum(1)], -1) for m in masks], 1
        ).to(src_flatten.dtype)
        valid_ratios = valid_sizes / spatial_shapes.flip(-1)[None].to(valid_sizes)

        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_sizes, pos_flatten, mask_flatten)

        bs, _, c = memory.shape
        enc_outputs_class = enc_outputs_coord_unact = None
        if self.two_stage:
            output_memory, output_proposals, valid = self.gen_encoder_output_proposals(memory, mask_flatten, spatial_shapes, valid_sizes)
            if proposal_heads is None:
                raise ValueError("DeformableTransformer: two-stage needs proposal_heads=(class head, box head)")
            enc_outputs_class = proposal_heads[0](output_memory)
            enc_outputs_coord_unact = proposal_heads[1](output_memory) + output_proposals
            # Unlike the official code, padded/invalid tokens can never be selected, so the
            # selection does not depend on how much padding the batch has.
            objectness = enc_outputs_class[..., 0].masked_fill(~valid, float("-inf"))
            topk = min(self.two_stage_num_proposals, objectness.shape[1])
            topk_idx = torch.topk(objectness, topk, dim=1)[1]
            topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_idx[..., None].expand(-1, -1, 4)).detach()
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
        init_reference = reference_points

        hs, inter_references = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flatten,
            bbox_embed=bbox_embed,
        )
        return TransformerOutput(hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact)
