"""The trainer's and the checkpointer's guards, in process on small models: no checkpoint with a
non-finite tensor, the matcher's NaN cost and a NaN gradient norm in the one-line message,
--resume keeping the config's optimizer settings, max_to_keep counting files on disk, a full
disk, and a training set whose every image is unreadable."""
import os

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import hooks
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage
from PIL import Image
from torch import nn

from detrex_lite.data import DetrDatasetMapper, ImageReadError, ResumableTrainLoader, detr_train_augmentation
from detrex_lite.engine import (
    AtomicCheckpointer,
    CheckpointWriteError,
    DetrTrainer,
    NonFiniteLossError,
    PeriodicCheckpointer,
)


class _Quadratic(nn.Module):
    """loss = (w . x - y)^2 summed; `mode` makes the forward pass misbehave on purpose."""

    def __init__(self, mode: str = ""):
        super().__init__()
        self.linear = nn.Linear(3, 1, bias=False)
        self.mode = mode

    def forward(self, batch):
        x, y = batch
        loss = ((self.linear(x).squeeze(-1) - y) ** 2).mean()
        if self.mode == "matcher":
            raise FloatingPointError("HungarianMatcher: inf/nan in the class cost (diverged predictions)")
        if self.mode == "nan_grad":
            w = self.linear.weight
            loss = loss + 0.0 * torch.sqrt(w - w.detach()).sum()  # finite loss, NaN gradient
        return {"loss_a": loss}


def _loader(batch):
    while True:
        yield batch


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, generator=g), torch.randn(4, generator=g)


def _steps(trainer, n, start=0):
    with EventStorage(start) as storage:
        for i in range(start, start + n):
            trainer.iter = storage.iter = i
            trainer.run_step()


def _trainer(model, tmp_path, lr=0.1, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = DetrTrainer(model, _loader(_batch()), optimizer, **kwargs)
    trainer.checkpointer = AtomicCheckpointer(model, str(tmp_path), trainer=trainer)
    return trainer


# ------------------------------------------------------------------ non-finite values
def test_checkpoint_with_non_finite_tensor_is_never_written_nor_named_latest(tmp_path):
    model = _Quadratic()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    with torch.no_grad():
        model.linear.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        checkpointer.save("model_0000009", iteration=9)
    message = str(e.value)
    assert message.startswith("non-finite weights at iteration 9: 1 of 1 tensors (model.linear.weight)")
    assert "model_0000009.pth was not written" in message
    assert f"last good checkpoint: {tmp_path / 'model_0000004.pth'}" in message
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"


def test_non_finite_optimizer_state_is_caught_too(tmp_path):
    model = _Quadratic()
    trainer = _trainer(model, tmp_path)
    _steps(trainer, 1)
    buffer = trainer.optimizer.state[model.linear.weight]["momentum_buffer"]
    buffer[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"trainer\.optimizer\.state\.0\.momentum_buffer"):
        trainer.checkpointer.save("model_0000000", iteration=0)
    assert not os.listdir(tmp_path)


def test_matcher_nan_cost_is_the_one_line_non_finite_error(tmp_path):
    trainer = _trainer(_Quadratic(mode="matcher"), tmp_path)
    trainer.checkpointer.save("model_0000002", iteration=2)
    with pytest.raises(NonFiniteLossError) as e:
        _steps(trainer, 1, start=3)
    assert str(e.value) == (
        "non-finite matching cost at iteration 3: HungarianMatcher: inf/nan in the class cost (diverged "
        f"predictions); last good checkpoint: {tmp_path / 'model_0000002.pth'} (resume from it with --resume "
        "and a lower optimizer.lr, or with train.amp.enabled=False)"
    )


def test_nan_gradient_norm_stops_before_the_optimizer_step(tmp_path):
    model = _Quadratic(mode="nan_grad")
    before = model.linear.weight.detach().clone()
    trainer = _trainer(model, tmp_path, clip_grad_params={"max_norm": 0.1})
    with pytest.raises(NonFiniteLossError, match=r"^non-finite gradient at iteration 0: grad_norm=nan \(losses loss_a="):
        _steps(trainer, 1)
    torch.testing.assert_close(model.linear.weight.detach(), before)  # not stepped into NaN


# ------------------------------------------------------------------ resume
def test_resume_keeps_the_configs_lr_and_the_checkpoints_state(tmp_path):
    model = _Quadratic()
    trainer = _trainer(model, tmp_path, lr=0.1)
    _steps(trainer, 2)
    trainer.checkpointer.save("model_0000001", iteration=1)
    momentum = trainer.optimizer.state[model.linear.weight]["momentum_buffer"].clone()

    resumed_model = _Quadratic()
    resumed = _trainer(resumed_model, tmp_path, lr=0.01)  # e.g. `--resume optimizer.lr=0.01`
    resumed.checkpointer.resume_or_load("", resume=True)
    group = resumed.optimizer.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["momentum"]) == (0.01, 0.01, 0.9)
    torch.testing.assert_close(resumed.optimizer.state[resumed_model.linear.weight]["momentum_buffer"], momentum)
    # The lr scheduler of the resumed run multiplies the config's lr.
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    resumed.register_hooks([hooks.LRScheduler(scheduler=MultiStepParamScheduler([1.0, 0.1], milestones=[4], num_updates=8))])
    resumed.iter = resumed.start_iter = 6  # lr x0.1 from iteration 4 of 8
    resumed.max_iter = 8
    resumed.before_train()
    assert group["lr"] == pytest.approx(0.001)


# ------------------------------------------------------------------ max_to_keep
def test_max_to_keep_counts_the_files_on_disk(tmp_path):
    model = _Quadratic()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    for i in range(4):  # an earlier run of the folder (then killed and resumed)
        checkpointer.save(f"model_{i:07d}", iteration=i)
        os.utime(tmp_path / f"model_{i:07d}.pth", (1000 + i, 1000 + i))
    (tmp_path / "model_final.pth").write_bytes(b"")
    periodic = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=3, max_iter=100)
    periodic.step(4)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000002.pth", "model_0000003.pth", "model_0000004.pth", "model_final.pth",
    ]
    periodic.step(5)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("model_0")) == [
        "model_0000003.pth", "model_0000004.pth", "model_0000005.pth",
    ]


def test_max_to_keep_keeps_the_latest_iterations_whatever_the_file_times(tmp_path):
    """A run folder copied without its modification times (cp -r): the oldest files by time are
    the latest checkpoints; max_to_keep still removes the lowest iterations."""
    model = _Quadratic()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    for i in range(4):
        checkpointer.save(f"model_{i:07d}", iteration=i)
        os.utime(tmp_path / f"model_{i:07d}.pth", (2000 - i, 2000 - i))  # times reversed
    periodic = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=2, max_iter=100)
    periodic.step(4)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("model_0")) == [
        "model_0000003.pth", "model_0000004.pth",
    ]


# ------------------------------------------------------------------ full disk
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_is_one_line_and_replaces_nothing(tmp_path):
    model = _Quadratic()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    # The temporary file of the next save is a link to /dev/full: every write fails with ENOSPC,
    # exactly as on a full file system.
    os.symlink("/dev/full", tmp_path / f".model_0000001.pth.tmp.{os.getpid()}")
    with pytest.raises(CheckpointWriteError) as e:
        checkpointer.save("model_0000001", iteration=1)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / 'model_0000001.pth'} (")
    assert f"free space in {tmp_path}: " in message and "MB" in message
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert torch.load(tmp_path / "model_0000000.pth", weights_only=False)["iteration"] == 0


# ------------------------------------------------------------------ unreadable training set
@pytest.mark.parametrize("build_loader", [build_detection_train_loader, ResumableTrainLoader])
def test_every_image_unreadable_with_skip_unreadable_is_one_clear_error(tmp_path, build_loader):
    records = [
        {"file_name": str(tmp_path / f"missing_{i}.jpg"), "height": 32, "width": 32, "image_id": i,
         "annotations": [{"bbox": [1, 1, 8, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}]}
        for i in range(3)
    ]
    mapper = DetrDatasetMapper(detr_train_augmentation([32], max_size=64), skip_unreadable=True)
    loader = build_loader(records, mapper=mapper, total_batch_size=2, num_workers=0)
    trainer = DetrTrainer(_Quadratic(), loader, torch.optim.SGD(_Quadratic().parameters(), lr=0.1))
    with pytest.raises(ImageReadError, match="^no training image could be read: the mapper skipped every image"):
        _steps(trainer, 1)


# ------------------------------------------------------------------ divergence
class _Diverging(nn.Module):
    """A noisy least-squares problem: stable at a small lr, geometrically diverging at a large one."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, batch):
        x, y = batch
        return {"loss_a": ((self.linear(x).squeeze(-1) - y) ** 2).mean()}


def _noisy_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(16, 8, generator=g)
        yield x, x @ w + 0.1 * torch.randn(16, generator=g)


def test_last_good_checkpoint_after_divergence_is_from_before_it_and_resuming_from_it_works(tmp_path):
    """The run trains well, then its lr is raised 100x: the loss grows for tens of iterations
    (checkpoints of that stretch are finite but exploded) and then turns non-finite. The named
    checkpoint must be from before the loss left its range, `last_checkpoint` must name it, and
    following the advice (--resume with a lower lr) must train on without a non-finite value
    (it used to name the newest, exploded checkpoint and fail again at iteration 1)."""
    torch.manual_seed(0)
    model = _Diverging()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    trainer = DetrTrainer(model, _noisy_batches(), optimizer, clip_grad_params={"max_norm": float("inf")})
    trainer.checkpointer = AtomicCheckpointer(model, str(tmp_path), trainer=trainer)
    healthy_max = None
    with pytest.raises(NonFiniteLossError) as e, EventStorage(0) as storage:
        for i in range(2000):
            if i == 100:
                healthy_max = float(model.linear.weight.detach().abs().max())
                for group in optimizer.param_groups:
                    group["lr"] = 2.0  # diverges
            trainer.iter = storage.iter = i
            trainer.run_step()
            if i % 5 == 4:
                trainer.checkpointer.save(f"model_{i:07d}", iteration=i)
    message = str(e.value)
    start = trainer.divergence.excursion_start
    assert 100 <= start <= 102
    named = open(tmp_path / "last_checkpoint").read()
    named_iteration = int(named[len("model_"):-len(".pth")])
    assert named_iteration + 1 < start and named_iteration >= start - 7
    assert f"last good checkpoint: {tmp_path / named} (resume from it with --resume" in message
    newest = max(p for p in os.listdir(tmp_path) if p.startswith("model_"))
    exploded = torch.load(tmp_path / newest, weights_only=False)["model"]["linear.weight"].abs().max()
    saved = torch.load(tmp_path / named, weights_only=False)["model"]["linear.weight"].abs().max()
    assert exploded > 100 * healthy_max and saved < 2 * healthy_max
    # Follow the advice: --resume (from what last_checkpoint names) with a lower lr.
    resumed_model = _Diverging()
    optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.01)
    resumed = DetrTrainer(resumed_model, _noisy_batches(seed=1), optimizer, clip_grad_params={"max_norm": float("inf")})
    resumed.checkpointer = AtomicCheckpointer(resumed_model, str(tmp_path), trainer=resumed)
    resumed.checkpointer.resume_or_load("", resume=True)
    assert resumed.checkpointer.resumed == str(tmp_path / named)
    _steps(resumed, 200, start=named_iteration + 1)
    assert float(resumed_model.linear.weight.detach().abs().max()) < 2 * healthy_max
