"""The DETR transformer (Carion et al. 2020, Sec. 3.2 and Fig. 10): post-norm encoder and decoder.

Parameter names follow the official facebookresearch/detr code, so that its checkpoints (and the
Hugging Face port) convert with a short table:

    encoder.layers.{i}.{self_attn, linear1, linear2, norm1, norm2}
    decoder.layers.{i}.{self_attn, multihead_attn, linear1, linear2, norm1, norm2, norm3}
    decoder.norm

Unlike the official code, tensors are batch-first everywhere: ``(N, S, C)`` with ``S`` the
flattened ``H * W`` positions of the feature map, and ``(N, Q, C)`` for the object queries.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from detrex_lite.layers import with_pos_embed

__all__ = [
    "DetrTransformerEncoderLayer",
    "DetrTransformerDecoderLayer",
    "DetrTransformerEncoder",
    "DetrTransformerDecoder",
    "DetrTransformer",
    "DetrTransformerOutput",
]


class DetrTransformerEncoderLayer(nn.Module):
    """Self-attention then a feed-forward network, each followed by residual + LayerNorm.

    The position embedding is added to queries and keys only, never to the values (DETR Fig. 10).
    """

    def __init__(
        self, *, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Optional[Tensor] = None, padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            src: (N, S, C) flattened image features.
            pos: (N, S, C) position embedding of ``src`` (or None).
            padding_mask: (N, S) bool, True at padded positions (they are never attended to).
        Returns:
            (N, S, C) encoded features.
        """
        q = k = with_pos_embed(src, pos)
        attn = self.self_attn(q, k, value=src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(torch.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DetrTransformerDecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, then a feed-forward network;
    each followed by residual + LayerNorm (post-norm)."""

    def __init__(
        self, *, d_model: int = 256, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            tgt: (N, Q, C) decoder states of the object queries (zeros before the first layer).
            memory: (N, S, C) encoder output.
            query_pos: (N, Q, C) learned query embedding, added to queries and keys.
            pos: (N, S, C) position embedding of ``memory``, added to the cross-attention keys.
            memory_padding_mask: (N, S) bool, True at padded positions of ``memory``.
        Returns:
            (N, Q, C) updated decoder states.
        """
        q = k = with_pos_embed(tgt, query_pos)
        attn = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(
            with_pos_embed(tgt, query_pos),
            with_pos_embed(memory, pos),
            value=memory,
            key_padding_mask=memory_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(torch.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class DetrTransformerEncoder(nn.Module):
    """A stack of post-norm encoder layers (no final norm, as in the official post-norm model)."""

    def __init__(self, *, num_layers: int = 6, **layer_kwargs):
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(DetrTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Optional[Tensor] = None, padding_mask: Optional[Tensor] = None) -> Tensor:
        """Shapes as in :meth:`DetrTransformerEncoderLayer.forward`."""
        for layer in self.layers:
            src = layer(src, pos=pos, padding_mask=padding_mask)
        return src


class DetrTransformerDecoder(nn.Module):
    """A stack of post-norm decoder layers with a shared final LayerNorm (``decoder.norm``).

    The final norm is applied to the output of every layer, so that the prediction heads see
    normalised states at every stage (the auxiliary losses of DETR Sec. 3.2 use them).
    """

    def __init__(self, *, num_layers: int = 6, d_model: int = 256, **layer_kwargs):
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            DetrTransformerDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Optional[Tensor] = None,
        pos: Optional[Tensor] = None,
        memory_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Shapes as in :meth:`DetrTransformerDecoderLayer.forward`.

        Returns:
            (L, N, Q, C): the normalised states after each of the L layers (last one last).
        """
        states = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos=query_pos, pos=pos, memory_padding_mask=memory_padding_mask)
            states.append(self.norm(tgt))
        return torch.stack(states)


class DetrTransformerOutput(NamedTuple):
    decoder_states: Tensor
    """(L, N, Q, C): normalised decoder states after each decoder layer."""
    memory: Tensor
    """(N, S, C): encoder output, S = H * W."""


class DetrTransformer(nn.Module):
    """Encoder-decoder transformer of DETR.

    Args:
        d_model: model width d (256).
        nhead: attention heads (8).
        dim_feedforward: hidden width of the feed-forward networks (2048).
        dropout: dropout in attention and feed-forward blocks (0.1).
        num_encoder_layers, num_decoder_layers: depths (6 and 6).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
    ):
        super().__init__()
        layer_kwargs = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
        self.encoder = DetrTransformerEncoder(num_layers=num_encoder_layers, **layer_kwargs)
        self.decoder = DetrTransformerDecoder(num_layers=num_decoder_layers, **layer_kwargs)
        self.d_model = d_model
        self._reset_parameters()

    def _reset_parameters(self):
        # Xavier-uniform for every matrix, as the official model does (nn.MultiheadAttention's
        # in-projection is already Xavier; the linear layers are not).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, padding_mask: Tensor, query_embed: Tensor, pos: Tensor) -> DetrTransformerOutput:
        """
        Args:
            src: (N, C, H, W) projected backbone features.
            padding_mask: (N, H, W) bool, True at padded pixels.
            query_embed: (Q, C) learned object queries (used as query position embedding).
            pos: (N, C, H, W) position embedding of ``src``.
        Returns:
            :class:`DetrTransformerOutput`.
        """
        n = src.shape[0]
        src = src.flatten(2).transpose(1, 2)  # (N, S, C)
        pos = pos.flatten(2).transpose(1, 2)
        padding_mask = padding_mask.flatten(1)
        query_pos = query_embed.unsqueeze(0).expand(n, -1, -1)
        memory = self.encoder(src, pos=pos, padding_mask=padding_mask)
        # The decoder starts from zeros; the queries enter only as position embedding (Sec. 3.2).
        tgt = torch.zeros_like(query_pos)
        states = self.decoder(tgt, memory, query_pos=query_pos, pos=pos, memory_padding_mask=padding_mask)
        return DetrTransformerOutput(decoder_states=states, memory=memory)
