"""Loss functions against the formulas evaluated by hand."""
import math

import pytest
import torch

from detrex_lite.modeling.losses import giou_box_loss, l1_box_loss, sigmoid_focal_loss


def _focal_scalar(x, t, alpha, gamma):
    p = 1 / (1 + math.exp(-x))
    if t == 1:
        loss = -math.log(p) * (1 - p) ** gamma
        return (alpha if alpha >= 0 else 1.0) * loss
    loss = -math.log(1 - p) * p**gamma
    return (1 - alpha if alpha >= 0 else 1.0) * loss


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5)])
def test_sigmoid_focal_loss_matches_formula(alpha, gamma):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(2, 5, 3, generator=g) > 0.7).double()
    num_boxes = 4.0
    expected = sum(
        _focal_scalar(x, t, alpha, gamma) for x, t in zip(logits.flatten().tolist(), targets.flatten().tolist())
    ) / num_boxes
    got = sigmoid_focal_loss(logits, targets, num_boxes, alpha=alpha, gamma=gamma)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_sigmoid_focal_loss_equals_official_normalisation():
    # Official Deformable DETR: loss.mean(1).sum() / num_boxes * num_queries.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 4, generator=g, dtype=torch.float64)
    targets = (torch.rand(3, 7, 4, generator=g) > 0.8).double()
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = (0.25 * targets + 0.75 * (1 - targets)) * ce * (1 - p_t) ** 2
    official = loss.mean(1).sum() / 5.0 * logits.shape[1]
    assert sigmoid_focal_loss(logits, targets, 5.0).item() == pytest.approx(official.item(), rel=1e-12)


def test_l1_and_giou_losses_by_hand():
    # cxcywh of xyxy [0,0,2,2] and [1,1,3,3]: intersection 1, union 7, enclosing box 9.
    src = torch.tensor([[1.0, 1.0, 2.0, 2.0], [0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    tgt = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.5, 0.5, 0.2, 0.2]], dtype=torch.float64)
    assert l1_box_loss(src, tgt, 2.0).item() == pytest.approx((1 + 1 + 0 + 0) / 2.0)
    giou_first = 1 / 7 - (9 - 7) / 9
    assert giou_box_loss(src, tgt, 2.0).item() == pytest.approx(((1 - giou_first) + 0.0) / 2.0, rel=1e-12)


def test_giou_loss_of_disjoint_boxes_exceeds_one():
    # xyxy [0,0,1,1] and [2,0,3,1]: IoU 0, enclosing 3, union 2 -> GIoU = -1/3.
    src = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    tgt = torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert giou_box_loss(src, tgt, 1.0).item() == pytest.approx(1 + 1 / 3, rel=1e-6)
