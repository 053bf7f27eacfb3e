"""DetrTrainer (loss sum, gradient clipping, AMP, EMA, non-finite guard) and the atomic
checkpointer, in process on a two-parameter model so that every number has a hand-computed
reference."""
import os

import pytest
import torch
from torch import nn

from detectron2.utils.events import EventStorage

from detrex_lite.engine import AtomicCheckpointer, DetrTrainer, ModelEMA, NonFiniteLossError


class _TwoLoss(nn.Module):
    """loss_a = weight * (w . x - y)^2, loss_b = |b|; `x` may hold NaN to poison the loss."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1, bias=False)
        self.b = nn.Parameter(torch.tensor([0.5]))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.seen_dtype = None

    def forward(self, batch):
        x, y = batch
        out = self.linear(x)
        self.seen_dtype = out.dtype
        self.steps += 1
        return {"loss_a": 2.0 * ((out.float().squeeze(-1) - y) ** 2).mean(), "loss_b": self.b.abs().sum()}


def _loader(batches):
    while True:
        yield from batches


def _run_steps(trainer, n, start=0):
    with EventStorage(start) as storage:
        for i in range(start, start + n):
            trainer.iter = i
            storage.iter = i
            trainer.run_step()
    return storage


def _batch():
    torch.manual_seed(0)
    return torch.randn(4, 3), torch.randn(4)


def test_step_sums_losses_and_clips_the_global_norm():
    batch = _batch()
    model = _TwoLoss()
    reference = _TwoLoss()
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = DetrTrainer(model, _loader([batch]), optimizer, clip_grad_params={"max_norm": 0.1, "norm_type": 2})
    storage = _run_steps(trainer, 1)

    losses = reference(batch)
    total = losses["loss_a"] + losses["loss_b"]
    grads = torch.autograd.grad(total, [reference.linear.weight, reference.b])
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    assert norm > 0.1  # clipping is active
    scale = 0.1 / (norm + 1e-6)
    torch.testing.assert_close(model.linear.weight, reference.linear.weight - scale * grads[0])
    torch.testing.assert_close(model.b, reference.b - scale * grads[1])
    assert storage.history("grad_norm").latest() == pytest.approx(norm.item(), rel=1e-5)
    assert storage.history("total_loss").latest() == pytest.approx(total.item(), rel=1e-6)


def test_no_clipping_is_plain_sgd():
    batch = _batch()
    model = _TwoLoss()
    w0 = model.linear.weight.detach().clone()
    trainer = DetrTrainer(model, _loader([batch]), torch.optim.SGD(model.parameters(), lr=0.01))
    _run_steps(trainer, 1)
    x, y = batch
    # d/dw 2 * mean((w.x - y)^2) = 4/N * sum((w.x - y) x)
    grad = 4.0 / 4 * ((x @ w0.t()).squeeze(-1) - y) @ x
    torch.testing.assert_close(model.linear.weight, w0 - 0.01 * grad[None])


def test_non_finite_loss_stops_with_iteration_terms_and_checkpoint(tmp_path):
    good = _batch()
    bad = (torch.full((4, 3), float("nan")), torch.zeros(4))
    model = _TwoLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = DetrTrainer(model, _loader([good, good, bad]), optimizer)
    checkpointer = AtomicCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.checkpointer = checkpointer
    _run_steps(trainer, 2)
    checkpointer.save("model_0000001", iteration=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum_before = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError) as e:
        _run_steps(trainer, 1, start=2)
    msg = str(e.value)
    assert "iteration 2" in msg and "loss_a=nan" in msg and f"loss_b={model.b.abs().item():.6g}" in msg
    assert os.path.join(str(tmp_path), "model_0000001.pth") in msg
    # The bad step changed nothing: no backward, no optimizer step.
    for k, v in model.state_dict().items():
        if k != "steps":
            torch.testing.assert_close(v, before[k])
    for p, m in zip(model.parameters(), momentum_before):
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], m)


def test_non_finite_message_without_checkpoint():
    model = _TwoLoss()
    bad = (torch.full((4, 3), float("inf")), torch.zeros(4))
    trainer = DetrTrainer(model, _loader([bad]), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(NonFiniteLossError, match="iteration 0: loss_a=(inf|nan), loss_b=0.5; last good checkpoint: none saved yet"):
        _run_steps(trainer, 1)


def test_ema_matches_closed_form_and_swaps_back():
    model = _TwoLoss()
    ema = ModelEMA(model, decay=0.9)
    w = [model.linear.weight.detach().clone()]
    expected = w[0].clone()
    for value in (1.0, -2.0, 3.0):
        with torch.no_grad():
            model.linear.weight.fill_(value)
            model.steps += 5
        ema.update(model)
        expected = 0.9 * expected + 0.1 * value
    torch.testing.assert_close(ema.shadow["linear.weight"], expected)
    assert int(ema.shadow["steps"]) == int(model.steps)  # integer buffers are copied
    with ema.apply_to(model):
        torch.testing.assert_close(model.linear.weight.detach(), expected)
    assert torch.all(model.linear.weight == 3.0)  # restored
    state = ema.state_dict()
    other = ModelEMA(_TwoLoss(), decay=0.9)
    other.load_state_dict(state)
    torch.testing.assert_close(other.shadow["linear.weight"], expected)
    assert other.num_updates == 3


def test_trainer_updates_ema_after_each_step():
    batch = _batch()
    model = _TwoLoss()
    ema = ModelEMA(model, decay=0.5)
    w0 = model.linear.weight.detach().clone()
    trainer = DetrTrainer(model, _loader([batch]), torch.optim.SGD(model.parameters(), lr=0.1), model_ema=ema)
    _run_steps(trainer, 1)
    torch.testing.assert_close(ema.shadow["linear.weight"], 0.5 * w0 + 0.5 * model.linear.weight.detach())


def test_bf16_autocast_on_cpu():
    model = _TwoLoss()
    trainer = DetrTrainer(model, _loader([_batch()]), torch.optim.SGD(model.parameters(), lr=0.1), amp_enabled=True, amp_dtype="bfloat16")
    assert not trainer.grad_scaler.is_enabled()
    _run_steps(trainer, 1)
    assert model.seen_dtype == torch.bfloat16
    assert "grad_scaler" not in trainer.state_dict()


def test_fp16_grad_scaler_state_is_checkpointed(tmp_path):
    model = _TwoLoss()
    trainer = DetrTrainer(model, _loader([_batch()]), torch.optim.SGD(model.parameters(), lr=0.1), amp_enabled=True, amp_dtype="float16")
    assert trainer.grad_scaler.is_enabled()
    _run_steps(trainer, 2)
    scale = trainer.grad_scaler.get_scale()
    state = trainer.state_dict()
    assert state["grad_scaler"]["scale"] == scale
    other = DetrTrainer(_TwoLoss(), _loader([_batch()]), torch.optim.SGD(model.parameters(), lr=0.1), amp_enabled=True)
    other.load_state_dict(state)
    assert other.grad_scaler.get_scale() == scale and other.iter == trainer.iter


def test_bad_amp_dtype():
    model = _TwoLoss()
    with pytest.raises(ValueError, match="amp_dtype"):
        DetrTrainer(model, _loader([_batch()]), torch.optim.SGD(model.parameters(), lr=0.1), amp_dtype="fp8")


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    model = _TwoLoss()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    assert checkpointer.last_checkpoint_path() == os.path.join(str(tmp_path), "model_0000000.pth")

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")  # a write interrupted half-way
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000001", iteration=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert open(tmp_path / "last_checkpoint").read() == "model_0000000.pth"
    assert torch.load(tmp_path / "model_0000000.pth")["iteration"] == 0


def test_resume_skips_an_unreadable_checkpoint(tmp_path):
    model = _TwoLoss()
    with torch.no_grad():
        model.linear.weight.fill_(7.0)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    # A damaged newer file that last_checkpoint names (as a non-atomic writer could leave).
    (tmp_path / "model_0000009.pth").write_bytes(b"truncated")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    fresh = _TwoLoss()
    extra = AtomicCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert torch.all(fresh.linear.weight == 7.0)


def test_resume_without_last_checkpoint_takes_the_newest_complete_one(tmp_path, caplog):
    """`last_checkpoint` lost (e.g. a partial copy): --resume continues from the newest complete
    checkpoint and says so; it used to start again from iteration 0 and overwrite the files."""
    model = _TwoLoss()
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    for it, value in ((4, 4.0), (9, 9.0)):
        with torch.no_grad():
            model.linear.weight.fill_(value)
        checkpointer.save(f"model_{it:07d}", iteration=it)
    os.utime(tmp_path / "model_0000004.pth", (1, 1))  # older on disk too
    os.remove(tmp_path / "last_checkpoint")
    fresh = _TwoLoss()
    resumer = AtomicCheckpointer(fresh, str(tmp_path))
    with caplog.at_level("WARNING"):
        extra = resumer.resume_or_load("", resume=True)
    assert extra["iteration"] == 9 and torch.all(fresh.linear.weight == 9.0)
    assert resumer.resumed == str(tmp_path / "model_0000009.pth")
    assert "has no last_checkpoint file: resuming from the newest complete checkpoint" in caplog.text


def test_resume_with_only_unloadable_checkpoints_refuses_to_start_over(tmp_path):
    from detrex_lite.errors import CheckpointError

    (tmp_path / "model_0000004.pth").write_bytes(b"truncated")
    (tmp_path / "model_final.pth").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=r"^--resume: no checkpoint in .* can be loaded, and training from scratch would overwrite them"):
        AtomicCheckpointer(_TwoLoss(), str(tmp_path)).resume_or_load("", resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_in_an_empty_folder_starts_fresh(tmp_path):
    checkpointer = AtomicCheckpointer(_TwoLoss(), str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True) == {}
    assert checkpointer.resumed == ""
