"""Box ops, sine position embedding and MLP against hand computations."""
import math

import pytest
import torch

from detrex_lite.layers import MLP, PositionEmbeddingSine
from detrex_lite.utils.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    degenerate_boxes,
    generalized_box_iou,
    paired_generalized_box_iou,
)


def test_box_conversions_round_trip_and_values():
    cxcywh = torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.5, 0.5, 1.0, 1.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.equal(xyxy, torch.tensor([[8.0, 17.0, 12.0, 23.0], [0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)
    # Works on any leading shape.
    assert box_cxcywh_to_xyxy(torch.rand(2, 3, 4)).shape == (2, 3, 4)


def test_box_iou_and_giou_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [4.0, 0.0, 5.0, 1.0]])
    iou, union = box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 4.0, 5.0]]))
    giou = generalized_box_iou(a, b)
    # Third: enclosing box [0,0,5,2] = 10, union 5 -> 0 - 5/10.
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, 1.0, -0.5]]))


def test_generalized_box_iou_rejects_inverted_boxes():
    with pytest.raises(ValueError, match="boxes1"):
        generalized_box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


def test_paired_giou_is_the_diagonal_of_pairwise_giou():
    g = torch.Generator().manual_seed(0)
    a = box_cxcywh_to_xyxy(torch.rand(50, 4, generator=g, dtype=torch.float64))
    b = box_cxcywh_to_xyxy(torch.rand(50, 4, generator=g, dtype=torch.float64))
    b[:5] = a[:5]  # identical pairs: GIoU 1
    b[5] = torch.tensor([3.0, 3.0, 4.0, 4.0], dtype=torch.float64)  # disjoint: GIoU < 0
    paired = paired_generalized_box_iou(a, b)
    torch.testing.assert_close(paired, torch.diag(generalized_box_iou(a, b)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(paired[:5], torch.ones(5, dtype=torch.float64))
    assert paired[5] < 0


def test_degenerate_boxes_flag():
    assert not degenerate_boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    assert degenerate_boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.6, 0.7, 0.5]]))
    assert degenerate_boxes(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]))


def _sine_scalar(pos, extent, i, num_pos_feats, offset, temperature=10000.0):
    v = (pos + offset) / (extent + 1e-6) * 2 * math.pi
    v /= temperature ** (2 * (i // 2) / num_pos_feats)
    return math.sin(v) if i % 2 == 0 else math.cos(v)


@pytest.mark.parametrize("offset", [0.0, -0.5])
def test_position_embedding_matches_formula(offset):
    npf = 6
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[0, :, 4:] = True  # last column is padding
    mask[0, 2:, :] = True  # last row is padding
    pos = PositionEmbeddingSine(embed_dim=2 * npf, offset=offset)(mask)
    assert pos.shape == (1, 2 * npf, 3, 5)
    for y in range(2):
        for x in range(4):
            for i in range(npf):
                # y channels first; positions are 1-based counts of valid pixels.
                assert pos[0, i, y, x].item() == pytest.approx(_sine_scalar(y + 1, 2, i, npf, offset), abs=1e-5)
                assert pos[0, npf + i, y, x].item() == pytest.approx(_sine_scalar(x + 1, 4, i, npf, offset), abs=1e-5)


def test_position_embedding_ignores_padding_amount():
    embed = PositionEmbeddingSine(embed_dim=16)
    small = embed(torch.zeros(1, 4, 6, dtype=torch.bool))
    mask = torch.ones(1, 9, 11, dtype=torch.bool)
    mask[0, :4, :6] = False
    padded = embed(mask)
    assert torch.allclose(padded[..., :4, :6], small, atol=1e-6)


def test_mlp_layers_and_activation():
    mlp = MLP(4, 8, 2, 3)
    assert [tuple(l.weight.shape) for l in mlp.layers] == [(8, 4), (8, 8), (2, 8)]
    x = torch.randn(5, 4)
    h = torch.relu(mlp.layers[0](x))
    h = torch.relu(mlp.layers[1](h))
    assert torch.allclose(mlp(x), mlp.layers[2](h))
    assert sorted(k for k, _ in mlp.named_parameters())[0] == "layers.0.bias"
