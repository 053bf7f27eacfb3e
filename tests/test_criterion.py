"""SetCriterion: loss keys per stage, weights, normalisation, CE variant, encoder binary targets."""
import math

import pytest
import torch
from torch.nn import functional as F

from detrex_lite.modeling import HungarianMatcher, SetCriterion
from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class FixedMatcher(torch.nn.Module):
    """Matches target j to query j and records the labels it was given."""

    def __init__(self):
        super().__init__()
        self.seen_labels = []

    def forward(self, outputs, targets):
        self.seen_labels.append([t["labels"].clone() for t in targets])
        return [(torch.arange(len(t["labels"])), torch.arange(len(t["labels"]))) for t in targets]


def _stage(g, bs=2, q=5, k=3):
    return {"pred_logits": torch.randn(bs, q, k, generator=g), "pred_boxes": torch.rand(bs, q, 4, generator=g) * 0.4 + 0.3}


def _outputs(g, num_layers, two_stage, k=3):
    out = _stage(g, k=k)
    out["aux_outputs"] = [_stage(g, k=k) for _ in range(num_layers - 1)]
    if two_stage:
        out["enc_outputs"] = _stage(g, k=k)
    return out


def _targets(g, sizes=(2, 3), k=3):
    return [
        {"labels": torch.randint(0, k, (n,), generator=g), "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.3}
        for n in sizes
    ]


def _expected_keys(num_layers, two_stage):
    suffixes = [""] + [f"_{i}" for i in range(num_layers - 1)] + (["_enc"] if two_stage else [])
    return {base + s for s in suffixes for base in ("loss_class", "loss_bbox", "loss_giou")}


@pytest.mark.parametrize("num_layers,two_stage", [(6, False), (6, True), (3, False), (3, True), (1, False)])
def test_loss_keys_are_exactly_the_stages(num_layers, two_stage):
    g = torch.Generator().manual_seed(0)
    criterion = SetCriterion(3, HungarianMatcher(2.0, 5.0, 2.0))
    losses = criterion(_outputs(g, num_layers, two_stage), _targets(g))
    assert set(losses) == _expected_keys(num_layers, two_stage)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_focal_losses_by_hand_with_weights():
    g = torch.Generator().manual_seed(1)
    outputs, targets = _stage(g), _targets(g)
    criterion = SetCriterion(3, FixedMatcher(), weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 3.0})
    losses = criterion(outputs, targets)

    num_boxes = 5.0
    focal = 0.0
    l1 = 0.0
    giou = 0.0
    for b, t in enumerate(targets):
        for qi in range(5):
            for c in range(3):
                x = outputs["pred_logits"][b, qi, c].item()
                p = 1 / (1 + math.exp(-x))
                positive = qi < len(t["labels"]) and t["labels"][qi].item() == c
                focal += 0.25 * -math.log(p) * (1 - p) ** 2 if positive else 0.75 * -math.log(1 - p) * p**2
        for j in range(len(t["labels"])):
            src, tgt = outputs["pred_boxes"][b, j], t["boxes"][j]
            l1 += (src - tgt).abs().sum().item()
            giou += 1 - generalized_box_iou(box_cxcywh_to_xyxy(src[None]), box_cxcywh_to_xyxy(tgt[None])).item()
    assert losses["loss_class"].item() == pytest.approx(2.0 * focal / num_boxes, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5.0 * l1 / num_boxes, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(3.0 * giou / num_boxes, rel=1e-5)


def test_same_base_weights_on_every_stage():
    g = torch.Generator().manual_seed(2)
    stage, targets = _stage(g), _targets(g)
    outputs = dict(stage, aux_outputs=[dict(stage)], enc_outputs=dict(stage))
    # Identical predictions in every stage and all-zero labels: every stage gives the same numbers.
    zero_targets = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
    losses = SetCriterion(3, FixedMatcher())(outputs, zero_targets)
    for base in ("loss_class", "loss_bbox", "loss_giou"):
        assert losses[base + "_0"].item() == pytest.approx(losses[base].item(), rel=1e-6)
        assert losses[base + "_enc"].item() == pytest.approx(losses[base].item(), rel=1e-6)


def test_encoder_stage_uses_class_agnostic_targets():
    g = torch.Generator().manual_seed(3)
    matcher = FixedMatcher()
    targets = _targets(g)
    targets[0]["labels"] = torch.tensor([2, 1])
    SetCriterion(3, matcher)(_outputs(g, 2, True), targets)
    final, aux, enc = matcher.seen_labels
    assert torch.equal(final[0], torch.tensor([2, 1])) and torch.equal(aux[0], torch.tensor([2, 1]))
    assert all(torch.equal(lbl, torch.zeros_like(lbl)) for lbl in enc)


def test_ce_loss_with_no_object_weight():
    g = torch.Generator().manual_seed(4)
    k = 3
    outputs = {"pred_logits": torch.randn(2, 5, k + 1, generator=g), "pred_boxes": torch.rand(2, 5, 4, generator=g) * 0.4 + 0.3}
    targets = _targets(g, k=k)
    criterion = SetCriterion(k, FixedMatcher(), weight_dict={"loss_class": 1.0}, loss_class_type="ce_loss", eos_coef=0.1)
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_class"}
    # Weighted mean by hand: sum_i w(y_i) * -log softmax(x_i)[y_i] / sum_i w(y_i).
    num, den = 0.0, 0.0
    for b, t in enumerate(targets):
        for qi in range(5):
            y = t["labels"][qi].item() if qi < len(t["labels"]) else k
            w = 0.1 if y == k else 1.0
            num += w * -F.log_softmax(outputs["pred_logits"][b, qi], -1)[y].item()
            den += w
    assert losses["loss_class"].item() == pytest.approx(num / den, rel=1e-5)


def test_empty_targets_give_finite_losses():
    g = torch.Generator().manual_seed(5)
    outputs = _outputs(g, 2, True)
    targets = _targets(g, sizes=(0, 0))
    losses = SetCriterion(3, HungarianMatcher(2.0, 5.0, 2.0))(outputs, targets)
    assert set(losses) == _expected_keys(2, True)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # Every logit is a negative; num_boxes clamps to 1.
    p = outputs["pred_logits"].sigmoid()
    expected = (0.75 * -torch.log(1 - p) * p**2).sum().item() * 2.0
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)


def test_gradients_flow_to_predictions():
    g = torch.Generator().manual_seed(6)
    outputs = _outputs(g, 3, True)
    leaves = [outputs["pred_logits"], outputs["pred_boxes"], outputs["enc_outputs"]["pred_boxes"]]
    for t in leaves:
        t.requires_grad_(True)
    sum(SetCriterion(3, HungarianMatcher(2.0, 5.0, 2.0))(outputs, _targets(g)).values()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss_ce"):
        SetCriterion(3, FixedMatcher(), weight_dict={"loss_ce": 1.0})
    with pytest.raises(ValueError, match="loss_class_type"):
        SetCriterion(3, FixedMatcher(), loss_class_type="softmax")
