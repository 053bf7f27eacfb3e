"""Killing a training run (SIGKILL: no clean-up runs) during a checkpoint save and at a random
moment, then --resume: `last_checkpoint` always names a complete, loadable file, the run
continues from the iteration after it, and the optimizer state continues (no reset)."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
TOY_CONFIG = os.path.join(REPO, "tests", "configs", "toy_detector_demo.py")
MAX_ITER = 400


def _cmd(out, *extra, resume=False):
    return [
        sys.executable, TRAIN_NET, *(["--resume"] if resume else []), "--config-file", TOY_CONFIG, f"train.output_dir={out}",
        f"train.max_iter={MAX_ITER}", "train.log_period=1", "train.checkpointer.period=1", "train.checkpointer.max_to_keep=3",
        # 8 MB checkpoints: each save takes long enough to be caught in the middle.
        "+model.checkpoint_padding=2000000", *extra,
    ]


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _saved_iters(out):
    return sorted(int(f[6:13]) for f in os.listdir(out) if f.startswith("model_0") and f.endswith(".pth"))


def _start_and_kill(out, resume, when):
    """Start a run; SIGKILL it when `when(out)` becomes true (polled every ms)."""
    args = _cmd(out, resume=resume)
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError("the run ended before it was killed:\n" + proc.stderr.read()[-3000:])
            if os.path.isdir(out) and when(out):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.001)
        raise AssertionError("the kill condition never happened")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_last_checkpoint(out):
    name = open(os.path.join(out, "last_checkpoint")).read()
    ckpt = torch.load(os.path.join(out, name), weights_only=False)  # complete and loadable
    return ckpt["iteration"], ckpt


def _adam_steps(ckpt):
    return {int(s["step"]) for s in ckpt["trainer"]["optimizer"]["state"].values()}


@pytest.mark.slow
def test_sigkill_during_save_and_at_random_then_resume(tmp_path):
    out = str(tmp_path / "run")
    rng = random.Random(os.getpid())

    # 1. Killed while a checkpoint is being written (its temporary file exists), after a few.
    def saving(out):
        names = os.listdir(out)
        return len(_saved_iters(out)) >= 2 and any(".tmp." in n for n in names)

    _start_and_kill(out, resume=False, when=saving)
    last_iter, ckpt = _check_last_checkpoint(out)
    # The kill may hit the model file or the `last_checkpoint` update: either way the file
    # named is one of the completed ones, with the optimizer state of that iteration.
    assert last_iter in _saved_iters(out) and _adam_steps(ckpt) == {last_iter + 1}

    # 2. Resumed, then killed at a random point a few iterations later.
    target = last_iter + rng.randint(2, 6)
    _start_and_kill(out, resume=True, when=lambda out: any(i >= target for i in _saved_iters(out)) and rng.random() < 0.05)
    killed_iter, ckpt = _check_last_checkpoint(out)
    assert killed_iter > last_iter and _adam_steps(ckpt) == {killed_iter + 1}

    # 3. Resumed to the end of a shorter schedule: it continues right after the last checkpoint.
    end = killed_iter + 3
    args = _cmd(out, f"train.max_iter={end + 1}", resume=True)  # the last max_iter wins
    proc = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming at iteration {killed_iter + 1}" in proc.stdout + proc.stderr
    final_iter, ckpt = _check_last_checkpoint(out)
    assert final_iter == end
    assert _adam_steps(ckpt) == {end + 1}  # one optimizer step per iteration over the three runs
    assert not [n for n in os.listdir(out) if ".tmp." in n]  # the killed runs' temporaries are gone
