"""A resumed run is the uninterrupted run, bit for bit, with real augmentation and shuffling.

The training loader (detrex_lite.data.ResumableTrainLoader) makes every image and augmentation
a function of a stream position that the checkpoint keeps; the trainer seeds each iteration's
random draws from (seed, rank, iteration). Here a run stopped by SIGTERM through tools/train_net.py
and resumed with --resume is compared with an uninterrupted run of the same config (mapping its
images in the training process, where the stopped run has two workers: batches do not depend on
num_workers): the losses
in metrics.json and the final weights and optimizer state must be equal (torch.equal), on CPU
with one thread. With detectron2's loader the weights differed by ~3e-4 after 10 iterations.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detrex_lite.data import ResumableTrainLoader
from detrex_lite.data.train_loader import _MappedStream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
TINY_CONFIG = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
MAX_ITER = 10


# ------------------------------------------------------------------ the loader alone
def _tiny_loader(num_workers: int, grouping: bool) -> ResumableTrainLoader:
    cfg = LazyConfig.load(TINY_CONFIG).dataloader.train
    cfg.num_workers = num_workers
    cfg.aspect_ratio_grouping = grouping
    cfg.seed = 7
    return instantiate(cfg)


def _same_batch(a, b) -> bool:
    return len(a) == len(b) and all(
        x["file_name"] == y["file_name"] and torch.equal(x["image"], y["image"])
        and torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
        and torch.equal(x["instances"].gt_classes, y["instances"].gt_classes)
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize("num_workers, grouping", [(0, False), (2, True)])
def test_loader_restarted_from_any_saved_state_yields_the_same_batches(num_workers, grouping):
    reference = _tiny_loader(0, grouping)
    batches, states = [], []
    for batch in reference:
        batches.append(batch)
        states.append(reference.state_dict())
        if len(batches) == 8:
            break
    # The test covers what it claims: shuffled, augmented, and images waiting in the groups.
    names = [d["file_name"] for batch in batches for d in batch]
    assert names != sorted(names)
    if grouping:
        assert any(any(s["pending"]) for s in states[:5])
    else:
        assert [s["position"] for s in states] == [2 * (i + 1) for i in range(8)]
    for k in (0, 2, 4):
        resumed = _tiny_loader(num_workers, grouping)
        resumed.load_state_dict(states[k])
        got = [batch for _, batch in zip(range(3), resumed)]
        assert all(_same_batch(a, b) for a, b in zip(got, batches[k + 1:k + 4])), f"after batch {k}"


def test_processes_take_disjoint_positions_of_one_stream():
    """Rank r of w reads global positions r, r + w, ...: two ranks together read the one-process
    stream (detectron2's TrainingSampler sharding), and an epoch is a permutation."""
    records = list(range(10))
    one = _MappedStream(records, lambda r: r, seed=3, shuffle=True, rank=0, world_size=1)
    ranks = [_MappedStream(records, lambda r: r, seed=3, shuffle=True, rank=r, world_size=2) for r in (0, 1)]
    stream = [one[k][1] for k in range(30)]
    assert [ranks[g % 2][g // 2][1] for g in range(30)] == stream
    assert sorted(stream[:10]) == sorted(stream[10:20]) == records and stream[:10] != stream[10:20]


def test_resume_with_another_number_of_processes_continues_after_the_furthest_position(caplog):
    """Two processes saved (rank 0 reads global position 2 * 5 + 0 = 10 next, rank 1 reads
    2 * 4 + 1 = 9 next): one process continues at 10, so that no image is read twice (9 is left
    out) and the images waiting in the groups are dropped, with a warning."""
    loader = ResumableTrainLoader(list(range(20)), mapper=None, total_batch_size=1, aspect_ratio_grouping=False, seed=7)
    saved = [dict(loader.state_dict(), rank=r, world_size=2, position=p, pending=[[r], []]) for r, p in ((0, 5), (1, 4))]
    with caplog.at_level("WARNING", logger="detrex_lite.data.train_loader"):
        loader.load_state_dict(saved)
    assert loader.state_dict()["position"] == 10 and loader.state_dict()["pending"] == [[], []]
    assert "the checkpoint was written by 2 processes, this run has 1" in caplog.text
    stream = _MappedStream(list(range(20)), lambda r: r, seed=7, shuffle=True, rank=0, world_size=1)
    assert [batch[0] for _, batch in zip(range(3), loader)] == [stream[k][1] for k in (10, 11, 12)]


def test_a_custom_sampler_is_refused():
    with pytest.raises(ValueError, match="^dataloader.train.sampler: ResumableTrainLoader"):
        ResumableTrainLoader([{}], mapper=None, sampler=torch.utils.data.SequentialSampler([0]), total_batch_size=1)


# ------------------------------------------------------------------ SIGTERM, --resume, compare
def _cmd(out, *extra, resume=False):
    return [sys.executable, TRAIN_NET, *(["--resume"] if resume else []), "--config-file", TINY_CONFIG,
            f"train.output_dir={out}", f"train.max_iter={MAX_ITER}", "train.log_period=1",
            "train.checkpointer.period=100", *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _loss_rows(out):
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    return [{k: v for k, v in r.items() if k == "iteration" or "loss" in k} for r in rows]


def _run_and_sigterm(out, *extra, min_rows=3):
    proc = subprocess.Popen(_cmd(out, *extra), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            metrics = os.path.join(out, "metrics.json")
            if os.path.exists(metrics) and len(_loss_rows(out)) >= min_rows:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.01)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_then_resume_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Uninterrupted: the loader in the training process; stopped and resumed: two worker
    processes (the batches do not depend on the number of workers), aspect-ratio grouping on."""
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    grouped = "dataloader.train.aspect_ratio_grouping=True"
    done = subprocess.run(_cmd(straight, grouped, "dataloader.train.num_workers=0"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    workers = "dataloader.train.num_workers=2"
    rc, err = _run_and_sigterm(stopped, grouped, workers)
    assert rc == 75, err[-3000:]
    name = open(os.path.join(stopped, "last_checkpoint")).read()
    stop_iter = torch.load(os.path.join(stopped, name), weights_only=False)["iteration"]
    assert 2 <= stop_iter < MAX_ITER - 2, f"stopped after iteration {stop_iter}: too late to compare a resume"
    resumed = subprocess.run(_cmd(stopped, grouped, workers, resume=True), cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming at iteration {stop_iter + 1}" in resumed.stdout + resumed.stderr

    expected, got = _loss_rows(straight), _loss_rows(stopped)
    assert [r["iteration"] for r in got] == list(range(MAX_ITER))
    assert got == expected  # every loss term of every iteration, exactly (medians over 20 included)
    a = torch.load(os.path.join(straight, "model_final.pth"), weights_only=False)
    b = torch.load(os.path.join(stopped, "model_final.pth"), weights_only=False)
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"{len(differ)} weights differ, e.g. {differ[:3]}"
    moments_a = [s["exp_avg_sq"] for s in a["trainer"]["optimizer"]["state"].values()]
    moments_b = [s["exp_avg_sq"] for s in b["trainer"]["optimizer"]["state"].values()]
    assert len(moments_a) == len(moments_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b))
    assert a["trainer"]["data_loader"] == b["trainer"]["data_loader"]
