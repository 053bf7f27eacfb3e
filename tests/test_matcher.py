"""HungarianMatcher against brute force over all assignments with independently computed costs."""
import itertools
import math

import pytest
import torch

from detrex_lite.modeling import HungarianMatcher


def _giou_scalar(a, b):
    """GIoU of two cxcywh boxes, by hand."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (enclosing - union) / enclosing


def _pair_cost(logits, box, label, tgt_box, kind, w_class=2.0, w_bbox=5.0, w_giou=2.0, alpha=0.25, gamma=2.0):
    if kind == "focal_loss_cost":
        p = 1 / (1 + math.exp(-logits[label]))
        pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
        neg = (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)
        c_class = pos - neg
    else:
        exps = [math.exp(v) for v in logits]
        c_class = -exps[label] / sum(exps)
    c_bbox = sum(abs(x - y) for x, y in zip(box, tgt_box))
    return w_class * c_class + w_bbox * c_bbox - w_giou * _giou_scalar(box, tgt_box)


def _brute_force(logits, boxes, labels, tgt_boxes, kind):
    """Minimum total cost over every injective map targets -> queries."""
    q, n = len(boxes), len(labels)
    cost = [[_pair_cost(logits[i], boxes[i], labels[j], tgt_boxes[j], kind) for j in range(n)] for i in range(q)]
    best, best_map = float("inf"), None
    for queries in itertools.permutations(range(q), n):
        total = sum(cost[queries[j]][j] for j in range(n))
        if total < best:
            best, best_map = total, queries
    return best, best_map, cost


def _random_case(generator, bs, num_queries, num_classes, sizes, ce=False):
    logits = torch.randn(bs, num_queries, num_classes + (1 if ce else 0), generator=generator, dtype=torch.float64) * 2
    boxes = torch.rand(bs, num_queries, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2
    targets = []
    for n in sizes:
        targets.append({
            "labels": torch.randint(0, num_classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator, dtype=torch.float64) * 0.5 + 0.2,
        })
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


@pytest.mark.parametrize("kind", ["focal_loss_cost", "ce_cost"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(kind, seed):
    g = torch.Generator().manual_seed(seed)
    outputs, targets = _random_case(g, bs=2, num_queries=5, num_classes=3, sizes=[3, 4], ce=kind == "ce_cost")
    matcher = HungarianMatcher(2.0, 5.0, 2.0, cost_class_type=kind)
    indices = matcher(outputs, targets)
    for b, (rows, cols) in enumerate(indices):
        best, best_map, cost = _brute_force(
            outputs["pred_logits"][b].tolist(), outputs["pred_boxes"][b].tolist(),
            targets[b]["labels"].tolist(), targets[b]["boxes"].tolist(), kind,
        )
        assert len(rows) == len(cols) == len(targets[b]["labels"])
        total = sum(cost[r][c] for r, c in zip(rows.tolist(), cols.tolist()))
        assert total == pytest.approx(best, rel=1e-9, abs=1e-9)
        # The optimum is unique for random costs: the assignment itself must agree.
        assert {c: r for r, c in zip(rows.tolist(), cols.tolist())} == {j: best_map[j] for j in range(len(best_map))}
        assert rows.dtype == cols.dtype == torch.int64


def test_batched_equals_per_image():
    g = torch.Generator().manual_seed(7)
    sizes = [3, 0, 7, 1]
    outputs, targets = _random_case(g, bs=4, num_queries=12, num_classes=5, sizes=sizes)
    matcher = HungarianMatcher(2.0, 5.0, 2.0)
    batched = matcher(outputs, targets)
    for b in range(4):
        single = matcher({k: v[b : b + 1] for k, v in outputs.items()}, [targets[b]])[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
    assert [len(r) for r, _ in batched] == sizes


def test_empty_targets():
    g = torch.Generator().manual_seed(1)
    outputs, targets = _random_case(g, bs=3, num_queries=6, num_classes=4, sizes=[0, 0, 0])
    indices = HungarianMatcher(2.0, 5.0, 2.0)(outputs, targets)
    assert len(indices) == 3
    for rows, cols in indices:
        assert rows.numel() == 0 and cols.numel() == 0 and rows.dtype == torch.int64


def test_more_targets_than_queries_matches_every_query():
    g = torch.Generator().manual_seed(3)
    outputs, targets = _random_case(g, bs=1, num_queries=3, num_classes=2, sizes=[5])
    rows, cols = HungarianMatcher(1.0, 1.0, 1.0)(outputs, targets)[0]
    assert sorted(rows.tolist()) == [0, 1, 2]
    assert len(set(cols.tolist())) == 3


def test_nonfinite_cost_raises():
    outputs = {"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": torch.full((1, 2, 4), float("nan"))}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    with pytest.raises(FloatingPointError, match="inf/nan"):
        HungarianMatcher(1.0, 1.0, 1.0)(outputs, targets)


def test_degenerate_target_boxes_raise():
    """Target boxes are checked on the matcher's one host transfer (no sync of their own)."""
    outputs = {"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, -0.2, 0.2]])}]
    with pytest.raises(ValueError, match="target boxes"):
        HungarianMatcher(1.0, 1.0, 1.0)(outputs, targets)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="cost_class_type"):
        HungarianMatcher(cost_class_type="softmax")
    with pytest.raises(ValueError, match="all costs"):
        HungarianMatcher(0, 0, 0)
