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


# ------------------------------------------------------------------ SIGTERM / SIGUSR1 / Ctrl-C
FIXED_BATCH_CONFIG = os.path.join(REPO, "tests", "configs", "toy_detector_fixed_batch.py")


def _fixed_cmd(out, *extra, resume=False, launcher_flags=()):
    return [sys.executable, TRAIN_NET, *(["--resume"] if resume else []), *launcher_flags, "--config-file",
            FIXED_BATCH_CONFIG, f"train.output_dir={out}", "train.log_period=1", *extra]


def _rows(out):
    import json

    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip() and "total_loss" in line]


def _run_until_rows_then_signal(out, signals, *extra, min_rows=4, launcher_flags=()):
    """Start a long run; once metrics.json has min_rows rows send the first of `signals`, and
    each next one as soon as the run has printed that it received the previous one (signals
    sent back to back would merge into one)."""
    import threading

    proc = subprocess.Popen(_fixed_cmd(out, *extra, launcher_flags=launcher_flags), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, received = [], threading.Semaphore(0)

    def read():
        for line in proc.stdout:
            lines.append(line)
            if " received: finishing the current iteration" in line:
                received.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(os.path.join(out, "metrics.json")) and len(_rows(out)) >= min_rows:
                for i, sig in enumerate(signals):
                    if i:
                        assert received.acquire(timeout=60), "the run never acknowledged the signal"
                    proc.send_signal(sig)
                break
            time.sleep(0.02)
        proc.wait(timeout=240)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines)


def test_sigusr1_checkpoints_and_exits_for_requeue(tmp_path):
    out = str(tmp_path / "run")
    rc, output = _run_until_rows_then_signal(out, [signal.SIGUSR1])
    assert rc == 75, output[-3000:]  # REQUEUE_EXIT_CODE
    iteration, ckpt = _check_last_checkpoint(out)
    assert iteration == max(r["iteration"] for r in _rows(out)) >= 3
    assert _adam_steps(ckpt) == {iteration + 1}
    assert f"SIGUSR1: stopped after iteration {iteration}; checkpoint written to {out}/model_{iteration:07d}.pth" in output


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_run_continues(tmp_path):
    sig = signal.SIGTERM
    out = str(tmp_path / "preempted")
    rc, output = _run_until_rows_then_signal(out, [sig])
    assert rc == 75, output[-3000:]  # REQUEUE_EXIT_CODE
    iteration, ckpt = _check_last_checkpoint(out)
    # The iteration in progress was finished, then saved: every logged row is in the checkpoint.
    assert iteration == max(r["iteration"] for r in _rows(out)) >= 3
    assert _adam_steps(ckpt) == {iteration + 1}
    path = os.path.join(out, f"model_{iteration:07d}.pth")
    assert f"{sig.name}: stopped after iteration {iteration}; checkpoint written to {path}" in output
    assert not os.path.exists(os.path.join(out, "train_net.lock"))
    end = iteration + 4

    resumed = subprocess.run(_fixed_cmd(out, f"train.max_iter={end}", resume=True), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming at iteration {iteration + 1}" in resumed.stdout + resumed.stderr
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == list(range(end))  # no gap, no repeat
    # The losses continue the run's descent (a restart would begin again at row 0's loss).
    assert rows[iteration + 1]["total_loss"] < rows[iteration]["total_loss"] < rows[0]["total_loss"]

    # ... and the weights are those of an uninterrupted run of the same length.
    straight = str(tmp_path / "straight")
    proc = subprocess.run(_fixed_cmd(straight, f"train.max_iter={end}"), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    b = torch.load(os.path.join(straight, "model_final.pth"), weights_only=False)
    assert a["iteration"] == b["iteration"] == end - 1
    for key in b["model"]:  # bit for bit (it differed by ~6e-8 before the per-iteration seeds)
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_first_ctrl_c_checkpoints_and_stops(tmp_path):
    out = str(tmp_path / "run")
    rc, output = _run_until_rows_then_signal(out, [signal.SIGINT])
    assert rc == 130, output[-3000:]
    iteration, _ = _check_last_checkpoint(out)
    assert iteration == max(r["iteration"] for r in _rows(out))
    assert "SIGINT received: finishing the current iteration, then writing a checkpoint (Ctrl-C again stops at once)" in output
    assert f"SIGINT: stopped after iteration {iteration}" in output


def test_second_ctrl_c_stops_at_once(tmp_path):
    out = str(tmp_path / "run")
    # 8 MB checkpoints: the second Ctrl-C comes during the step or the save.
    rc, output = _run_until_rows_then_signal(out, [signal.SIGINT, signal.SIGINT], "+model.checkpoint_padding=2000000")
    assert rc == 130, output[-3000:]
    assert "train_net: second interrupt: stopping at once" in output
    assert "train_net: error: interrupted twice: stopped at once" in output
    assert "Traceback" not in output
    assert not [n for n in os.listdir(out) if ".tmp." in n]
    if os.path.exists(os.path.join(out, "last_checkpoint")):  # only if the save finished first
        _check_last_checkpoint(out)


@pytest.mark.slow
def test_sigterm_to_a_two_process_run(tmp_path):
    """`kill -TERM <train_net>` of a --num-gpus 2 run (gloo on CPU): the launcher passes it on,
    both ranks stop after the same iteration, rank 0 writes the checkpoint, exit code 75."""
    out = str(tmp_path / "run")
    rc, output = _run_until_rows_then_signal(out, [signal.SIGTERM], min_rows=4, launcher_flags=["--num-gpus", "2"])
    assert rc == 75, output[-3000:]
    iteration, ckpt = _check_last_checkpoint(out)
    assert iteration == max(r["iteration"] for r in _rows(out))
    assert _adam_steps(ckpt) == {iteration + 1}
    assert output.count("SIGTERM received") == 2  # each rank got it from the launcher
    assert "Traceback" not in output


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: the SigCgt mask of /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_during_start_up_exits_for_requeue(tmp_path, sig):
    """A signal in the first seconds (imports, config, model), before the training loop's handler:
    it used to kill the run with rc 143, which tools/submit_slurm.sh does not requeue."""
    out = str(tmp_path / "run")
    proc = subprocess.Popen(_cmd(out), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, sig):  # the handler is there from the first lines of the tool
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert f"train_net: {signal.Signals(sig).name} received outside the training loop" in err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(out, "train_net.lock"))
