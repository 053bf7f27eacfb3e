"""Evaluation and checkpoint periods follow train.max_iter; a finished run does not train again."""
import os

import pytest
from detectron2.config import LazyConfig, instantiate

from detrex_lite.config import apply_overrides_checked
from detrex_lite.solver import epochs_to_iters, period_to_iters, schedule_periods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CONFIG = os.path.join(REPO, "projects/deformable_detr/configs/deformable_detr_r50_50ep.py")
DETR_CONFIG = os.path.join(REPO, "projects/detr/configs/detr_r50_500ep.py")
DEMO_CONFIG = os.path.join(REPO, "projects/deformable_detr/configs/deformable_detr_r18_demo.py")


def test_period_to_iters():
    assert period_to_iters(5000, 1000, "k") == 5000  # an int is iterations, whatever max_iter is
    assert period_to_iters(0, 1000, "k", allow_zero=True) == 0
    assert period_to_iters(0.1, 1000, "k") == 100
    assert period_to_iters(1 / 6, 1200, "k") == 200
    assert period_to_iters(1.0, 40, "k") == 40
    assert period_to_iters(0.01, 40, "k") == 1  # never 0 (that would mean "never")
    with pytest.raises(ValueError, match=r"train.eval_period=1.5: a float is a fraction of train.max_iter"):
        period_to_iters(1.5, 1000, "train.eval_period")
    with pytest.raises(ValueError, match=r"train.checkpointer.period=0: expected an int >= 1"):
        period_to_iters(0, 1000, "train.checkpointer.period")
    for bad in (-5, "5000", True, None):
        with pytest.raises(ValueError, match="k="):
            period_to_iters(bad, 1000, "k")


@pytest.mark.parametrize("config, epochs, batch", [(COCO_CONFIG, 50, 32), (DETR_CONFIG, 500, 64)])
def test_coco_periods_follow_max_iter(config, epochs, batch):
    cfg = LazyConfig.load(config)
    full = epochs_to_iters(epochs, batch)
    assert cfg.train.max_iter == full
    # The shipped schedule: 10 evaluations, 20 checkpoints over the run.
    assert schedule_periods(cfg.train) == (round(full / 10), round(full / 20))
    # A short run from the command line gets proportionate periods, not 18,485 iterations.
    apply_overrides_checked(cfg, ["train.max_iter=1000"])
    assert schedule_periods(cfg.train) == (100, 50)
    # The lr drop follows too: x0.1 after 80 % (DDETR epoch 40 of 50, DETR 400 of 500) of any max_iter.
    schedule = instantiate(cfg.lr_multiplier)
    assert schedule(0.79) == 1.0 and schedule(0.81) == pytest.approx(0.1)


def test_demo_periods_follow_max_iter():
    cfg = LazyConfig.load(DEMO_CONFIG)
    assert schedule_periods(cfg.train) == (200, 600)  # 1200 iterations: the AP curve of the README
    apply_overrides_checked(cfg, ["train.max_iter=40"])
    # A 40-iteration try saves a checkpoint half-way (before this, only model_final).
    assert schedule_periods(cfg.train) == (7, 20)
    apply_overrides_checked(cfg, ["train.eval_period=0", "train.checkpointer.period=15"])
    assert schedule_periods(cfg.train) == (0, 15)


def test_bad_period_is_a_one_line_config_error(tmp_path, capsys):
    from test_train_net import TOY_CONFIG, _train_net_module

    rc = _train_net_module().cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.eval_period=-1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("train_net: error: train.eval_period=-1: expected an int >= 0") and err.count("\n") == 1, err
