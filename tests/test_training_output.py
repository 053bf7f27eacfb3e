"""What a training run shows and keeps (issue 24, point 4): one short progress line per logging
period (total loss, the final stage's terms, lr, time, ETA), the model printout in log.txt only,
a closing summary, model_best.pth kept by the evaluation metric (and used by --run), and
model_final.pth stored once when it has the weights of the last periodic checkpoint."""
import json
import logging
import os
import re
import uuid
from types import SimpleNamespace

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from detrex_lite.checkpoint.run import RunMetadata, find_run_checkpoint
from detrex_lite.engine import AtomicCheckpointer, PeriodicCheckpointer, TrainingInterrupted
from detrex_lite.engine.best_checkpoint import BestCheckpointer
from detrex_lite.engine.summary import TrainingSummary
from detrex_lite.engine.writers import final_layer_terms, progress_line
from detrex_lite.utils.logger import LOG_FILE_ONLY, setup_logger

from test_train_net import REPO, read_metrics, run_train_net

TINY_DEMO = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")


# ------------------------------------------------------------------ the progress line
def test_final_layer_terms_from_the_key_names():
    keys = ["loss_class", "loss_bbox", "loss_giou", "loss_class_0", "loss_bbox_0", "loss_giou_0",
            "loss_class_enc", "loss_bbox_enc", "loss_giou_enc", "loss_class_dn", "loss_bbox_dn_0",
            "total_loss", "lr", "time", "data_time", "grad_norm"]
    assert final_layer_terms(keys) == ["loss_class", "loss_bbox", "loss_giou"]
    # a model without stages: every term is a final one, in its order
    assert final_layer_terms(["total_loss", "loss_b", "loss_a"]) == ["loss_b", "loss_a"]
    assert final_layer_terms(["total_loss", "lr"]) == []


def test_progress_line_format():
    line = progress_line(120, 1200, 4.2107, {"loss_class": 0.6123, "loss_bbox": 0.3211, "loss_giou": 0.7149},
                         1e-4, 0.4213, "0:07:31")
    assert line == "iter 120/1200  loss 4.21 (class 0.61 bbox 0.32 giou 0.71)  lr 1.0e-04  0.421 s/it  eta 0:07:31"
    assert progress_line(1, None, None, {}, None, None) == "iter 1"
    assert progress_line(3, 9, 2.0, {}, 0.001, None, "", 12.34).endswith("loss 2.00  lr 1.0e-03  mem 12.3G")


# ------------------------------------------------------------------ the model printout
def test_file_only_records_reach_the_file_and_not_the_terminal(tmp_path, capsys):
    name = f"detrex_lite_test_{uuid.uuid4().hex[:8]}"  # a fresh logger (detectron2 caches set-ups)
    log = setup_logger(str(tmp_path), names=(name,), color=False)
    log.info("printout line one\nprintout line two", extra=LOG_FILE_ONLY)
    log.info("a line for both")
    setup_logger(str(tmp_path), names=(name,), color=False)  # again: still one filter, one line each
    log.info("second line for both")
    for handler in log.handlers:
        handler.flush()
    out = capsys.readouterr()
    text = open(tmp_path / "log.txt").read()
    assert "printout line two" in text and "a line for both" in text
    assert "printout" not in out.out + out.err
    assert (out.out + out.err).count("a line for both") == 1 and (out.out + out.err).count("second line for both") == 1


# ------------------------------------------------------------------ model_final stored once
class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)


def _checkpointer(tmp_path, model=None, **checkpointables):
    model = model or _Linear()
    return AtomicCheckpointer(model, str(tmp_path), meta=RunMetadata({"num_classes": 2}), **checkpointables)


def test_final_checkpoint_is_a_hard_link_to_the_last_periodic_one(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    periodic = PeriodicCheckpointer(checkpointer, period=3, max_iter=6, max_to_keep=5)
    for iteration in range(6):
        periodic.step(iteration)
    final, last_periodic = tmp_path / "model_final.pth", tmp_path / "model_0000005.pth"
    assert os.stat(final).st_ino == os.stat(last_periodic).st_ino and os.stat(final).st_nlink == 2
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]
    assert torch.load(final, weights_only=True)["iteration"] == 5
    # A longer run (resumed) replaces model_final.pth by a new file; model_0000005.pth keeps its weights.
    with torch.no_grad():
        checkpointer.model.linear.weight.add_(1.0)
    longer = PeriodicCheckpointer(checkpointer, period=3, max_iter=8, max_to_keep=5)
    longer.step(6), longer.step(7)
    assert os.stat(final).st_ino != os.stat(last_periodic).st_ino and os.stat(last_periodic).st_nlink == 1
    assert torch.load(final, weights_only=True)["iteration"] == 7
    assert torch.load(last_periodic, weights_only=True)["iteration"] == 5


def test_final_checkpoint_is_a_copy_where_hard_links_fail(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", refuse)
    checkpointer = _checkpointer(tmp_path)
    periodic = PeriodicCheckpointer(checkpointer, period=2, max_iter=2)
    periodic.step(0), periodic.step(1)
    final, last_periodic = tmp_path / "model_final.pth", tmp_path / "model_0000001.pth"
    assert os.stat(final).st_ino != os.stat(last_periodic).st_ino
    a, b = torch.load(final, weights_only=True), torch.load(last_periodic, weights_only=True)
    assert a["iteration"] == b["iteration"] == 1 and torch.equal(a["model"]["linear.weight"], b["model"]["linear.weight"])
    assert open(tmp_path / "last_checkpoint").read() == "model_final.pth"


def test_final_checkpoint_off_the_period_is_written_once(tmp_path):
    checkpointer = _checkpointer(tmp_path)
    periodic = PeriodicCheckpointer(checkpointer, period=4, max_iter=6)
    for iteration in range(6):
        periodic.step(iteration)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == ["model_0000003.pth", "model_final.pth"]
    assert os.stat(tmp_path / "model_final.pth").st_nlink == 1


# ------------------------------------------------------------------ model_best.pth
class _Trainer:
    """What the hooks read of a trainer: storage, iter, start_iter, max_iter."""

    def __init__(self, storage, max_iter):
        self.storage, self.max_iter, self.iter, self.start_iter = storage, max_iter, 0, 0


class _Optimizer:
    def state_dict(self):
        return {"optimizer": {"state": {0: torch.ones(3)}}}

    def load_state_dict(self, state):
        pass


def _evaluate(hook, trainer, iteration, value, model):
    """As the EvalHook does at `iteration`: the metric in the storage; the model changed before."""
    with torch.no_grad():
        model.linear.weight.fill_(float(iteration))
    trainer.iter = trainer.storage.iter = iteration
    trainer.storage.put_scalars(**{"bbox/AP": value, "bbox/AP50": 2 * value}, smoothing_hint=False)
    hook.after_step()


@pytest.mark.parametrize("mode, values, best", [("max", [5.0, 7.5, 6.0], (7.5, 4)), ("min", [5.0, 7.5, 4.0], (4.0, 6))])
def test_best_checkpoint_follows_the_metric(tmp_path, mode, values, best):
    model = _Linear()
    checkpointer = _checkpointer(tmp_path, model, trainer=_Optimizer())
    hook = BestCheckpointer(checkpointer, "bbox/AP", mode)
    with EventStorage(0) as storage:
        trainer = hook.trainer = _Trainer(storage, max_iter=6)
        hook.before_train()
        for iteration, value in zip([1, 3, 5], values):
            _evaluate(hook, trainer, iteration, value, model)
            hook.after_step()  # a step without a new evaluation changes nothing
    assert hook.best == best and hook.last == (values[-1], 6)
    saved = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert saved["meta"] == {"num_classes": 2, "best": {"metric": "bbox/AP", "value": best[0], "iteration": best[1]}}
    # the weights of the evaluation that was best (filled with its 0-based iteration), no optimizer
    assert torch.equal(saved["model"]["linear.weight"], torch.full((2, 3), float(best[1] - 1)))
    assert "trainer" not in saved and set(saved) == {"model", "meta"}
    assert not os.path.exists(tmp_path / "last_checkpoint")  # model_best is never the one to resume


def test_best_checkpoint_survives_resume_and_a_fresh_run_drops_it(tmp_path, caplog):
    model = _Linear()
    checkpointer = _checkpointer(tmp_path, model)
    first = BestCheckpointer(checkpointer, "bbox/AP")
    with EventStorage(0) as storage:
        trainer = first.trainer = _Trainer(storage, max_iter=10)
        first.before_train()
        _evaluate(first, trainer, 3, 9.0, model)
    checkpointer.resumed = str(tmp_path / "model_0000003.pth")  # as resume_or_load sets it
    resumed = BestCheckpointer(checkpointer, "bbox/AP")
    with EventStorage(4) as storage:
        trainer = resumed.trainer = _Trainer(storage, max_iter=10)
        resumed.before_train()
        assert resumed.best == (9.0, 4)
        _evaluate(resumed, trainer, 7, 8.0, model)  # worse than before the resume: kept
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["meta"]["best"]["value"] == 9.0
    checkpointer.resumed = ""
    fresh = BestCheckpointer(checkpointer, "bbox/AP")
    with caplog.at_level(logging.INFO, logger="detrex_lite.engine.best_checkpoint"):
        fresh.before_train()
    assert not os.path.exists(tmp_path / "model_best.pth") and "of an earlier run" in caplog.text


def test_best_checkpoint_names_a_metric_the_evaluation_lacks(tmp_path, caplog):
    model = _Linear()
    hook = BestCheckpointer(_checkpointer(tmp_path, model), "segm/AP")
    with EventStorage(0) as storage, caplog.at_level(logging.WARNING):
        trainer = hook.trainer = _Trainer(storage, max_iter=10)
        _evaluate(hook, trainer, 3, 9.0, model)
        _evaluate(hook, trainer, 5, 9.0, model)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "train.best_checkpoint.metric='segm/AP' is not among the evaluation results (bbox/AP, bbox/AP50): "
        "no model_best.pth is kept"
    )
    assert not os.path.exists(tmp_path / "model_best.pth")


def test_run_folder_prefers_model_best(tmp_path, caplog):
    model = _Linear()
    checkpointer = _checkpointer(tmp_path, model)
    checkpointer.save("model_final", iteration=9)
    assert find_run_checkpoint(str(tmp_path)) == str(tmp_path / "model_final.pth")
    hook = BestCheckpointer(checkpointer, "bbox/AP")
    with EventStorage(0) as storage:
        hook.trainer = trainer = _Trainer(storage, max_iter=10)
        _evaluate(hook, trainer, 3, 21.456, model)
    with caplog.at_level(logging.INFO, logger="detrex_lite.checkpoint.run"):
        assert find_run_checkpoint(str(tmp_path)) == str(tmp_path / "model_best.pth")
    assert f"{tmp_path}: using model_best.pth (bbox/AP 21.46 after 4 iterations), the run's best evaluation" in caplog.text
    assert find_run_checkpoint(str(tmp_path), "model_final.pth") == str(tmp_path / "model_final.pth")


def test_best_checkpoint_mode_is_checked(tmp_path, capsys):
    from test_train_net import TOY_CONFIG, _train_net_module

    rc = _train_net_module().cli(
        ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.best_checkpoint.mode=maximum"]
    )
    assert rc == 2
    assert capsys.readouterr().err == "train_net: error: train.best_checkpoint.mode='maximum': expected 'max' or 'min'\n"
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------ the closing summary
def test_summary_after_an_interruption(tmp_path):
    model = _Linear()
    checkpointer = _checkpointer(tmp_path, model)
    checkpointer.save("model_0000041", iteration=41)
    best = BestCheckpointer(checkpointer, "bbox/AP")
    with EventStorage(0) as storage:
        best.trainer = trainer = _Trainer(storage, max_iter=100)
        _evaluate(best, trainer, 39, 3.25, model)
        summary = TrainingSummary(checkpointer, best, started=0.0)
        summary.trainer = trainer
        trainer.iter = 41
        lines = summary.lines(TrainingInterrupted("SIGTERM", 41, str(tmp_path / "model_0000041.pth"), 75))
    assert re.fullmatch(r"Training stopped by SIGTERM after iteration 41 of 100 \([0-9:, a-z]+\): continue with --resume", lines[0])
    assert lines[1:] == [
        f"  best bbox/AP 3.25 after 40 iterations: {tmp_path / 'model_best.pth'}",
        "  last bbox/AP 3.25 after 40 iterations",
        f"  last checkpoint (--resume starts there): {tmp_path / 'model_0000041.pth'}",
        f"  metrics: {tmp_path / 'metrics.json'} (tools/plot_metrics.py), log: {tmp_path / 'log.txt'}",
    ]


# ------------------------------------------------------------------ a real run
@pytest.mark.slow  # one tiny Deformable DETR training with 2 evaluations (~15 s on 2 idle cores)
def test_tiny_training_run_output(tmp_path):
    out = str(tmp_path / "run")
    proc = run_train_net(
        "--config-file", TINY_DEMO, f"train.output_dir={out}", "train.max_iter=6", "train.log_period=2",
        "train.eval_period=3", "train.checkpointer.period=3", "model.transformer.num_decoder_layers=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    terminal = proc.stdout + proc.stderr
    # one short line per logging period, the final stage's terms only
    progress = [line for line in terminal.splitlines() if "detrex_lite.engine.writers" in line]
    assert [re.search(r"iter (\d+)/6", line).group(1) for line in progress] == ["2", "4", "6"]
    rows = [r for r in read_metrics(out) if "total_loss" in r]
    assert "loss_class_0" in rows[0]  # the earlier layer's terms are in metrics.json ...
    for i, line in enumerate(progress):
        assert len(line) < 150, line
        # time and ETA once the iteration timer has its first measurement (after its warm-up)
        timing = r"  [\d.]+ s/it  eta \d+:\d\d:\d\d" if i else r"(  [\d.]+ s/it  eta \d+:\d\d:\d\d)?"
        assert re.search(r"  loss [\d.]+ \(class [\d.]+ bbox [\d.]+ giou [\d.]+\)  lr \d\.\de-\d\d" + timing + "$", line), line
        assert "_0" not in line  # ... and not on the line
    # the same windowed median as metrics.json's row of that iteration
    assert rows[0]["iteration"] == 1 and progress[0].split("  loss ")[1].split(" ")[0] == f"{rows[0]['total_loss']:.2f}"
    # the model printout: log.txt only
    log = open(os.path.join(out, "log.txt")).read()
    assert "(backbone): ResNet(" in log and "(backbone)" not in terminal
    assert "Model: DeformableDETR, " in terminal and "M parameters" in terminal
    # model_best.pth by AP, with its value and iteration in the metadata
    evaluations = [(r["bbox/AP"], min(r["iteration"] + 1, 6)) for r in read_metrics(out) if "bbox/AP" in r]
    assert [it for _, it in evaluations] == [3, 6]
    best_value, best_iteration = max(evaluations, key=lambda e: (e[0], -e[1]))  # the first of equal values
    best = torch.load(os.path.join(out, "model_best.pth"), weights_only=True)
    assert best["meta"]["best"] == {"metric": "bbox/AP", "value": pytest.approx(best_value), "iteration": best_iteration}
    assert best["meta"]["thing_classes"][0] == "circle" and "trainer" not in best
    # model_final.pth is the last periodic checkpoint's file, stored once
    assert os.path.samefile(os.path.join(out, "model_final.pth"), os.path.join(out, "model_0000005.pth"))
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000002.pth", "model_0000005.pth", "model_best.pth", "model_final.pth"]
    # the closing summary, last in the output
    summary = terminal[terminal.index("Training done: 6 iterations in "):].splitlines()
    last_value, last_iteration = evaluations[-1]

    def shown(value):  # two decimals; 4 significant digits below 1
        return f"{value:.2f}" if value == 0 or abs(value) >= 1 else f"{value:.4g}"

    assert summary[1:5] == [
        f"  best bbox/AP {shown(best_value)} after {best_iteration} iterations: {os.path.join(out, 'model_best.pth')}",
        f"  last bbox/AP {shown(last_value)} after {last_iteration} iterations",
        f"  final checkpoint: {os.path.join(out, 'model_final.pth')}",
        f"  metrics: {os.path.join(out, 'metrics.json')} (tools/plot_metrics.py), log: {os.path.join(out, 'log.txt')}",
    ]
    assert len(summary) == 5
