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


# --- Round 2 of the attack: races, a full disk, damaged lock files --------------------------------

_RACE_SCRIPT = r"""
import json, multiprocessing as mp, os, socket, subprocess, sys, tempfile
from detrex_lite.engine import OutputDirBusyError, OutputDirLock

def contender(folder, start, attempted, out):
    start.wait()
    try:
        lock = OutputDirLock(folder).acquire()
    except OutputDirBusyError as e:
        attempted.wait()
        out.put(("refused", str(e)))
        return
    attempted.wait()  # hold until every contender has tried
    out.put(("held", str(os.getpid())))
    lock.release()

if __name__ == "__main__":
    mp.set_start_method("fork")
    trials, n = int(sys.argv[1]), int(sys.argv[2])
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    doubles, unnamed = 0, 0
    root = tempfile.mkdtemp()
    for t in range(trials):
        folder = os.path.join(root, str(t)); os.makedirs(folder)
        with open(os.path.join(folder, "train_net.lock"), "w") as f:
            json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}, f)
        start, attempted, out = mp.Barrier(n), mp.Barrier(n), mp.Queue()
        procs = [mp.Process(target=contender, args=(folder, start, attempted, out)) for _ in range(n)]
        for p in procs: p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs: p.join()
        held = [r for k, r in results if k == "held"]
        doubles += len(held) > 1
        unnamed += sum(1 for k, r in results if k == "refused" and held and f"pid {held[0]} " not in r)
    print(json.dumps({"doubles": doubles, "unnamed": unnamed}))
"""


def test_takeover_of_a_stale_lock_is_atomic_under_contention(tmp_path):
    """Many runs starting together against a stale lock: exactly one holds it, and every refused
    run is told the winner's pid (the O_EXCL + rename takeover let two hold it in 19 of 200)."""
    script = tmp_path / "race.py"
    script.write_text(_RACE_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), "40", "3"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"doubles": 0, "unnamed": 0}


def test_full_disk_at_start_leaves_no_lock_behind(tmp_path, monkeypatch):
    """ENOSPC while writing the record: a one-line error naming the file, no (empty) lock file
    left, and the next run starts at once (it used to be refused for 5 minutes)."""
    import errno

    from detrex_lite.engine import OutputDirError
    from detrex_lite.engine import output_lock

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(output_lock, "_write_record", full)
    with pytest.raises(OutputDirError) as e:
        OutputDirLock(str(tmp_path)).acquire()
    assert str(e.value) == (
        f"cannot write the lock file {tmp_path / LOCK_NAME}: No space left on device (nothing was left behind)"
    )
    assert not (tmp_path / LOCK_NAME).exists()
    monkeypatch.undo()
    OutputDirLock(str(tmp_path)).acquire().release()


@pytest.mark.parametrize(
    "content",
    [b'{"pid":"abc"}', bytes(range(256)), b'{"pid": 99999999999}', b'{"pid": -1}', b'{"pid": true}',
     b"[1, 2]", b"", b"{", b'{"pid": 1.5, "host": "x"}'],
    ids=["pid-str", "random-bytes", "pid-overflow", "pid-negative", "pid-bool", "list", "empty", "truncated", "pid-float"],
)
def test_damaged_lock_file_is_taken_over_with_a_warning(tmp_path, content):
    (tmp_path / LOCK_NAME).write_bytes(content)
    lock = OutputDirLock(str(tmp_path)).acquire()
    try:
        assert json.load(open(tmp_path / LOCK_NAME))["pid"] == os.getpid()
        if content:
            assert "empty or damaged" in lock.taken_over
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_dangling_symlink_lock_is_replaced(tmp_path):
    os.symlink(tmp_path / "missing" / "target", tmp_path / LOCK_NAME)
    lock = OutputDirLock(str(tmp_path)).acquire()
    try:
        assert "not a lock file" in lock.taken_over
        assert not os.path.islink(tmp_path / LOCK_NAME)
    finally:
        lock.release()
    assert not (tmp_path / "missing").exists()


def test_lock_path_that_is_a_directory_is_named(tmp_path):
    from detrex_lite.engine import OutputDirError

    (tmp_path / LOCK_NAME).mkdir()
    with pytest.raises(OutputDirError, match=f"the lock path {tmp_path / LOCK_NAME} is a directory"):
        OutputDirLock(str(tmp_path)).acquire()


def test_a_live_kernel_lock_is_refused_even_without_a_record(tmp_path):
    """A holder between taking the kernel lock and writing its record is still a holder."""
    import fcntl

    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputDirBusyError, match="its holder has not written its record yet"):
            OutputDirLock(str(tmp_path)).acquire()
    finally:
        os.close(fd)
