"""Process launch: SLURM rank wiring, and that a failing or stuck worker ends the whole job with
an error (instead of a hang)."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from detrex_lite.engine import expand_hostlist, slurm_dist_from_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_hostlist():
    assert expand_hostlist("gpu[01-03,07],cpu5") == ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]
    assert expand_hostlist("node7") == ["node7"]
    assert expand_hostlist("a[8-10]") == ["a8", "a9", "a10"]


def test_slurm_two_nodes_of_four():
    env = {
        "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NNODES": "2",
        "SLURM_NODEID": "1", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "gpu[03-04]",
        "SLURM_JOB_ID": "12345",
    }
    info = slurm_dist_from_env(env)
    assert (info.global_rank, info.world_size, info.local_rank, info.local_size) == (5, 8, 1, 4)
    assert (info.machine_rank, info.num_machines) == (1, 2)
    assert info.dist_url == "tcp://gpu03:31845"  # 29500 + 12345 % 10000


def test_slurm_tasks_per_node_and_master_override():
    env = {
        "SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_NNODES": "2",
        "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_NODELIST": "n[1-2]", "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "4000",
    }
    info = slurm_dist_from_env(env)
    assert (info.local_size, info.machine_rank) == (4, 1)  # node id from the rank without SLURM_NODEID
    assert info.dist_url == "tcp://10.0.0.1:4000"


def test_slurm_missing_variables():
    with pytest.raises(RuntimeError, match="SLURM_PROCID"):
        slurm_dist_from_env({"SLURM_NTASKS": "2"})


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


_WORKERS = textwrap.dedent(
    """
    import sys, time
    from datetime import timedelta
    import torch, torch.distributed as dist
    from detectron2.utils import comm

    def report():
        t = torch.tensor([float(comm.get_rank())])
        dist.all_reduce(t)
        print(f"rank={comm.get_rank()} world={comm.get_world_size()} local={comm.get_local_rank()} "
              f"local_size={comm.get_local_size()} sum={t.item()}", flush=True)

    def _mark():
        # When rank 0 starts waiting: the job must end soon after, however slow start-up was.
        with open("rank0_waits", "w") as f:
            f.write(repr(time.time()))

    def rank1_raises():
        if comm.get_rank() == 1:
            time.sleep(1)
            raise ValueError("worker 1 failed on purpose")
        _mark()
        dist.barrier()  # rank 0 would wait until the timeout without the launcher's clean-up

    def rank1_hangs():
        if comm.get_rank() == 1:
            time.sleep(600)
        _mark()
        dist.barrier()  # rank 0 gives up after the timeout
    """
)


def _write_workers(tmp_path):
    (tmp_path / "engine_launch_workers.py").write_text(_WORKERS)


def test_slurm_wiring_in_two_simulated_tasks(tmp_path):
    _write_workers(tmp_path)
    port = _free_port()
    script = (
        "import sys; from datetime import timedelta; import engine_launch_workers as w; "
        "from detrex_lite.engine import launch_slurm; "
        "launch_slurm(w.report, timeout=timedelta(seconds=60), use_cuda=False)"
    )
    procs = []
    for rank in range(2):
        env = dict(
            os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_NNODES="1",
            SLURM_NODEID="0", SLURM_TASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port),
            PYTHONPATH=f"{tmp_path}:{REPO}",
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "rank=0 world=2 local=0 local_size=2 sum=1.0" in outs[0][0]
    assert "rank=1 world=2 local=1 local_size=2 sum=1.0" in outs[1][0]


def _run_launch(tmp_path, fn_name, timeout_s):
    _write_workers(tmp_path)
    script = (
        "from datetime import timedelta; import engine_launch_workers as w; "
        "from detrex_lite.engine import launch; "
        f"launch(w.{fn_name}, 2, dist_url='auto', timeout=timedelta(seconds={timeout_s}), use_cuda=False)"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}:{REPO}")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    end = time.time()
    assert (tmp_path / "rank0_waits").exists(), proc.stderr[-3000:]
    return proc, end - float((tmp_path / "rank0_waits").read_text())


def test_a_raising_worker_fails_the_job(tmp_path):
    proc, waited = _run_launch(tmp_path, "rank1_raises", timeout_s=300)
    assert proc.returncode != 0
    assert "worker 1 failed on purpose" in proc.stderr
    assert waited < 60, waited  # the launcher ended rank 0 at once, not after the 300 s timeout


def test_a_stuck_worker_fails_the_job_after_the_timeout(tmp_path):
    proc, waited = _run_launch(tmp_path, "rank1_hangs", timeout_s=5)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert 4 < waited < 60, waited  # rank 1 sleeps 600 s: the 5 s timeout ended the job
