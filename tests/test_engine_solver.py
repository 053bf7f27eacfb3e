"""Parameter groups (lr multipliers by name, weight decay by kind) and the epoch schedules."""
import math

import pytest
from torch import nn

from detectron2.config import instantiate

from detrex_lite.config import get_config
from detrex_lite.solver import (
    COCO_TRAIN2017_NUM_IMAGES,
    default_detr_schedule,
    epochs_to_iters,
    get_param_groups,
    iters_per_epoch,
)


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.sampling_offsets = nn.Linear(4, 8)
        self.value_proj = nn.Linear(4, 4)


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.backbone[0].weight.requires_grad_(False)  # a frozen stem
        self.attn = _Attn()
        self.reference_points = nn.Linear(4, 2)
        self.query_embed = nn.Embedding(5, 4)
        self.norm = nn.LayerNorm(4)
        self.tied = self.attn.value_proj  # the same parameters under a second name


def _lr_wd_by_name(model, groups):
    by_id = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in by_id, "a parameter is in two groups"
            by_id[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_id.get(id(p)) for n, p in model.named_parameters()}


def test_lr_multipliers_by_name_substring():
    model = _Small()
    groups = get_param_groups(
        model, base_lr=1.0, weight_decay=0.5,
        lr_multipliers={"backbone": 0.1, "sampling_offsets": 0.2, "reference_points": 0.3},
    )
    got = _lr_wd_by_name(model, groups)
    expected = {
        "backbone.0.weight": None,  # frozen: left out
        "backbone.0.bias": (0.1, 0.5),
        "backbone.1.weight": (0.1, 0.5),
        "backbone.1.bias": (0.1, 0.5),
        "attn.sampling_offsets.weight": (0.2, 0.5),
        "attn.sampling_offsets.bias": (0.2, 0.5),
        "attn.value_proj.weight": (1.0, 0.5),
        "attn.value_proj.bias": (1.0, 0.5),
        "reference_points.weight": (0.3, 0.5),
        "reference_points.bias": (0.3, 0.5),
        "query_embed.weight": (1.0, 0.5),
        "norm.weight": (1.0, 0.5),
        "norm.bias": (1.0, 0.5),
    }
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value), name
    # One group per distinct (lr, weight_decay): 0.1, 0.2, 1.0, 0.3.
    assert sorted(round(g["lr"], 6) for g in groups) == [0.1, 0.2, 0.3, 1.0]
    assert sum(len(g["params"]) for g in groups) == 12  # 13 names, 1 frozen, tied listed once


def test_weight_decay_by_kind_and_multiplier_product():
    model = _Small()
    groups = get_param_groups(
        model, base_lr=2.0, weight_decay=0.5, lr_multipliers={"backbone": 0.5, "backbone.1": 0.5},
        weight_decay_norm=0.0, weight_decay_embed=0.25, weight_decay_bias=0.125,
    )
    got = _lr_wd_by_name(model, groups)
    assert got["backbone.1.weight"] == pytest.approx((0.5, 0.0))  # both keys match: 2 * .5 * .5
    assert got["backbone.0.bias"] == pytest.approx((1.0, 0.125))
    assert got["norm.weight"] == pytest.approx((2.0, 0.0))
    assert got["norm.bias"] == pytest.approx((2.0, 0.0))  # norm rule before bias rule
    assert got["query_embed.weight"] == pytest.approx((2.0, 0.25))
    assert got["attn.value_proj.bias"] == pytest.approx((2.0, 0.125))
    assert got["attn.value_proj.weight"] == pytest.approx((2.0, 0.5))


def test_all_frozen_raises():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        get_param_groups(model, base_lr=1.0, weight_decay=0.0)


def test_adamw_config_builds_groups_on_a_model():
    cfg = get_config("common/optim.py").AdamW
    model = _Small()
    cfg.params.model = model
    opt = instantiate(cfg)
    got = _lr_wd_by_name(model, opt.param_groups)
    assert got["backbone.1.weight"] == pytest.approx((2e-5, 1e-4))
    assert got["attn.sampling_offsets.weight"] == pytest.approx((2e-5, 1e-4))
    assert got["reference_points.bias"] == pytest.approx((2e-5, 1e-4))
    assert got["attn.value_proj.weight"] == pytest.approx((2e-4, 1e-4))


def test_epochs_to_iters():
    assert COCO_TRAIN2017_NUM_IMAGES == 118287
    assert iters_per_epoch(32) == 3697  # 118287 / 32 = 3696.47 -> the partial batch counts
    assert epochs_to_iters(50, 32) == 50 * 3697
    assert epochs_to_iters(2, 4, num_images=10) == 6
    with pytest.raises(ValueError):
        iters_per_epoch(0)


def test_coco_schedule_50ep_drops_at_epoch_40():
    sched_cfg = get_config("common/coco_schedule.py")
    max_iter = sched_cfg.max_iter.ep50
    assert max_iter == 184850
    sched = instantiate(sched_cfg.lr_multiplier_50ep)
    drop = 40 * math.ceil(118287 / 32)  # 147880
    assert sched((drop - 1) / max_iter) == 1.0
    assert sched(drop / max_iter) == pytest.approx(0.1)
    assert sched((max_iter - 1) / max_iter) == pytest.approx(0.1)


def test_coco_schedule_500ep_detr():
    sched_cfg = get_config("common/coco_schedule.py")
    max_iter = sched_cfg.max_iter.ep500
    assert max_iter == 500 * math.ceil(118287 / 64)
    sched = instantiate(sched_cfg.lr_multiplier_500ep)
    drop = 400 * math.ceil(118287 / 64)
    assert sched((drop - 1) / max_iter) == 1.0 and sched(drop / max_iter) == pytest.approx(0.1)


def test_schedule_warmup_and_bad_decay():
    sched = instantiate(default_detr_schedule(epochs=10, decay_epochs=8, total_batch_size=1, num_images=10, warmup_iters=10))
    assert sched(0.0) == pytest.approx(0.001)
    assert sched(0.05) == pytest.approx(0.001 + (1 - 0.001) * 0.5)
    assert sched(0.5) == 1.0
    with pytest.raises(ValueError, match="decay_epochs"):
        default_detr_schedule(epochs=10, decay_epochs=10, total_batch_size=1, num_images=10)
