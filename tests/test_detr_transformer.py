"""The DETR transformer against a hand-written computation with the same weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from projects.detr.modeling.transformer import (
    DetrTransformer,
    DetrTransformerDecoderLayer,
    DetrTransformerEncoderLayer,
)

D, HEADS, FFN = 32, 4, 64


def _mha_reference(attn: torch.nn.MultiheadAttention, q, k, v, key_padding_mask=None):
    """Multi-head attention written out: (N, Lq, C), (N, Lk, C), (N, Lk, C) -> (N, Lq, C)."""
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    n, lq, c = q.shape
    lk = k.shape[1]
    dh = c // attn.num_heads

    def heads(x, length):
        return x.reshape(n, length, attn.num_heads, dh).transpose(1, 2)  # (N, h, L, dh)

    qh = heads(F.linear(q, w_q, b_q), lq)
    kh = heads(F.linear(k, w_k, b_k), lk)
    vh = heads(F.linear(v, w_v, b_v), lk)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(dh)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ vh).transpose(1, 2).reshape(n, lq, c)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _ln(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _ffn(layer, x):
    return F.linear(torch.relu(F.linear(x, layer.linear1.weight, layer.linear1.bias)), layer.linear2.weight, layer.linear2.bias)


def _encoder_layer_reference(layer, src, pos, mask):
    x = _ln(layer.norm1, src + _mha_reference(layer.self_attn, src + pos, src + pos, src, mask))
    return _ln(layer.norm2, x + _ffn(layer, x))


def _decoder_layer_reference(layer, tgt, memory, query_pos, pos, mask):
    x = _ln(layer.norm1, tgt + _mha_reference(layer.self_attn, tgt + query_pos, tgt + query_pos, tgt))
    x = _ln(layer.norm2, x + _mha_reference(layer.multihead_attn, x + query_pos, memory + pos, memory, mask))
    return _ln(layer.norm3, x + _ffn(layer, x))


def _randomise(module):
    # Random LayerNorm affine and biases too, so that a swapped norm or a missing bias shows up.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _padding_mask(n, s):
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[1, s // 2 :] = True  # the second image is half padding
    return mask


def test_encoder_layer_matches_reference():
    layer = _randomise(DetrTransformerEncoderLayer(d_model=D, nhead=HEADS, dim_feedforward=FFN)).eval()
    src, pos = torch.randn(2, 12, D), torch.randn(2, 12, D)
    mask = _padding_mask(2, 12)
    out = layer(src, pos=pos, padding_mask=mask)
    torch.testing.assert_close(out, _encoder_layer_reference(layer, src, pos, mask), rtol=1e-5, atol=1e-5)


def test_decoder_layer_matches_reference():
    layer = _randomise(DetrTransformerDecoderLayer(d_model=D, nhead=HEADS, dim_feedforward=FFN)).eval()
    tgt, query_pos = torch.randn(2, 5, D), torch.randn(2, 5, D)
    memory, pos = torch.randn(2, 12, D), torch.randn(2, 12, D)
    mask = _padding_mask(2, 12)
    out = layer(tgt, memory, query_pos=query_pos, pos=pos, memory_padding_mask=mask)
    expected = _decoder_layer_reference(layer, tgt, memory, query_pos, pos, mask)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_transformer_matches_layerwise_reference():
    model = _randomise(
        DetrTransformer(d_model=D, nhead=HEADS, dim_feedforward=FFN, num_encoder_layers=2, num_decoder_layers=3)
    ).eval()
    n, h, w, q = 2, 3, 4, 5
    src, pos = torch.randn(n, D, h, w), torch.randn(n, D, h, w)
    mask = torch.zeros(n, h, w, dtype=torch.bool)
    mask[1, :, 2:] = True
    query = torch.randn(q, D)
    out = model(src, mask, query, pos)

    s_src, s_pos, s_mask = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), mask.flatten(1)
    memory = s_src
    for layer in model.encoder.layers:
        memory = _encoder_layer_reference(layer, memory, s_pos, s_mask)
    tgt, query_pos = torch.zeros(n, q, D), query.expand(n, q, D)
    states = []
    for layer in model.decoder.layers:
        tgt = _decoder_layer_reference(layer, tgt, memory, query_pos, s_pos, s_mask)
        states.append(_ln(model.decoder.norm, tgt))
    assert out.decoder_states.shape == (3, n, q, D)
    assert out.memory.shape == (n, h * w, D)
    torch.testing.assert_close(out.memory, memory, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.decoder_states, torch.stack(states), rtol=1e-4, atol=1e-4)


def test_padding_does_not_change_valid_outputs():
    """An image alone equals the same image padded inside a batch (on its valid positions)."""
    model = DetrTransformer(d_model=D, nhead=HEADS, dim_feedforward=FFN, num_encoder_layers=2, num_decoder_layers=2)
    model.eval()
    src, pos, query = torch.randn(1, D, 3, 4), torch.randn(1, D, 3, 4), torch.randn(6, D)
    alone = model(src, torch.zeros(1, 3, 4, dtype=torch.bool), query, pos)

    big_src, big_pos = torch.randn(2, D, 5, 6) * 10, torch.randn(2, D, 5, 6)
    big_src[0, :, :3, :4], big_pos[0, :, :3, :4] = src[0], pos[0]
    mask = torch.ones(2, 5, 6, dtype=torch.bool)
    mask[0, :3, :4] = False
    mask[1] = False
    batched = model(big_src, mask, query, big_pos)
    torch.testing.assert_close(batched.decoder_states[:, :1], alone.decoder_states, rtol=1e-4, atol=1e-4)
    valid = (~mask[0]).flatten()
    torch.testing.assert_close(batched.memory[0, valid], alone.memory[0], rtol=1e-4, atol=1e-4)


def test_official_parameter_names():
    model = DetrTransformer(d_model=D, nhead=HEADS, dim_feedforward=FFN, num_encoder_layers=1, num_decoder_layers=1)
    names = {k for k in model.state_dict()}
    expected = {
        "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.0.self_attn.in_proj_bias",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.self_attn.out_proj.bias",
    }
    for part in ("linear1", "linear2", "norm1", "norm2"):
        expected |= {f"encoder.layers.0.{part}.weight", f"encoder.layers.0.{part}.bias"}
    for attn in ("self_attn", "multihead_attn"):
        expected |= {f"decoder.layers.0.{attn}.in_proj_weight", f"decoder.layers.0.{attn}.in_proj_bias"}
        expected |= {f"decoder.layers.0.{attn}.out_proj.weight", f"decoder.layers.0.{attn}.out_proj.bias"}
    for part in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        expected |= {f"decoder.layers.0.{part}.weight", f"decoder.layers.0.{part}.bias"}
    expected |= {"decoder.norm.weight", "decoder.norm.bias"}
    assert names == expected
