"""One run per output folder: the lock names a live holder, and a lock left by a dead run (a
killed process on this host, an earlier run of a requeued SLURM job, another host that stopped
refreshing it) is taken over with a message."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from detrex_lite.engine import OutputDirBusyError, OutputDirLock
from detrex_lite.engine.output_lock import LOCK_NAME, _process_start_ticks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "configs", "toy_detector_demo.py")


def _write_lock(folder, **holder):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    with open(path, "w") as f:
        json.dump({"started": "2026-01-01T00:00:00", **holder}, f)
    return path


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_lock_is_exclusive_and_released(tmp_path):
    with OutputDirLock(str(tmp_path)) as lock:
        holder = json.load(open(tmp_path / LOCK_NAME))
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(OutputDirBusyError) as e:
            OutputDirLock(str(tmp_path)).acquire()
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(e.value)
        assert lock.taken_over is None
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_holder_on_this_host_is_refused(tmp_path, live_process):
    _write_lock(tmp_path, pid=live_process.pid, host=socket.gethostname(), pid_start=_process_start_ticks(live_process.pid))
    with pytest.raises(OutputDirBusyError, match=f"in use by another run: pid {live_process.pid} on host {socket.gethostname()}"):
        OutputDirLock(str(tmp_path)).acquire()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, host=socket.gethostname())
    lock = OutputDirLock(str(tmp_path)).acquire()
    try:
        assert f"pid {dead.pid}" in lock.taken_over and "no longer exists" in lock.taken_over
        assert json.load(open(tmp_path / LOCK_NAME))["pid"] == os.getpid()
    finally:
        lock.release()


def test_reused_pid_is_detected(tmp_path, live_process):
    _write_lock(tmp_path, pid=live_process.pid, host=socket.gethostname(), pid_start="1")
    lock = OutputDirLock(str(tmp_path)).acquire()
    lock.release()
    assert "now belongs to another process" in lock.taken_over


def test_other_host_fresh_is_refused_and_silent_is_stale(tmp_path):
    path = _write_lock(tmp_path, pid=12345, host="some-other-node")
    with pytest.raises(OutputDirBusyError, match="pid 12345 on host some-other-node"):
        OutputDirLock(str(tmp_path), stale_after_s=300).acquire()
    old = time.time() - 600
    os.utime(path, (old, old))
    lock = OutputDirLock(str(tmp_path), stale_after_s=300).acquire()
    lock.release()
    assert "last refreshed 6" in lock.taken_over


def test_earlier_run_of_a_requeued_slurm_job_is_stale(tmp_path, monkeypatch):
    _write_lock(tmp_path, pid=12345, host="node-a", slurm_job_id="777", slurm_restart_count="0")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = OutputDirLock(str(tmp_path)).acquire()
    lock.release()
    assert "earlier run of this SLURM job 777" in lock.taken_over


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = OutputDirLock(str(tmp_path), heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 600
        os.utime(tmp_path / LOCK_NAME, (old, old))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(tmp_path / LOCK_NAME) < 5
    finally:
        lock.release()


def test_train_net_refuses_a_busy_output_dir(tmp_path, live_process, capsys):
    from detrex_lite.cli import train_net

    _write_lock(tmp_path, pid=live_process.pid, host=socket.gethostname(), pid_start=_process_start_ticks(live_process.pid))
    rc = train_net.cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (
        f"train_net: error: output folder {tmp_path} is in use by another run: pid {live_process.pid} on host "
        f"{socket.gethostname()}, started 2026-01-01T00:00:00 (lock file {tmp_path / LOCK_NAME}); use another "
        "train.output_dir, or wait for that run to end\n"
    )
    assert os.listdir(tmp_path) == [LOCK_NAME]  # nothing written
