"""tools/submit_slurm.sh with stand-in `srun` and `scontrol` programs (no SLURM here): the exit
code 75 of a run stopped by a signal requeues the job, a requeued job continues with --resume,
and any other exit code is passed through without a requeue."""
import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "submit_slurm.sh")


def _fake_bin(tmp_path, srun_exit):
    """srun records its arguments and exits with srun_exit; scontrol records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("srun", f'printf "%s\\n" "$@" > "{tmp_path}/srun_args"\nexit {srun_exit}\n'),
        ("scontrol", f'printf "%s\\n" "$@" > "{tmp_path}/scontrol_args"\n'),
    ):
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(bin_dir)


def _submit(tmp_path, srun_exit, **env):
    bin_dir = _fake_bin(tmp_path, srun_exit)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env.update(PATH=bin_dir + os.pathsep + os.environ["PATH"], SLURM_SUBMIT_DIR=REPO, SLURM_JOB_ID="4242",
                    PYTHON="python", **env)
    return subprocess.run(["bash", SCRIPT, "--config-file", "cfg.py", "train.output_dir=out"], env=full_env,
                          capture_output=True, text=True, timeout=60)


def _lines(path):
    return path.read_text().splitlines() if path.exists() else None


def test_stopped_by_a_signal_requeues_the_job(tmp_path):
    proc = _submit(tmp_path, 75)
    assert proc.returncode == 75, proc.stderr
    assert _lines(tmp_path / "srun_args") == [
        "--kill-on-bad-exit=1", "python", "tools/train_net.py", "--slurm", "--config-file", "cfg.py",
        "train.output_dir=out",
    ]
    assert _lines(tmp_path / "scontrol_args") == ["requeue", "4242"]


@pytest.mark.parametrize("code", [0, 1, 130])
def test_other_exit_codes_do_not_requeue(tmp_path, code):
    proc = _submit(tmp_path, code)
    assert proc.returncode == code
    assert _lines(tmp_path / "scontrol_args") is None


def test_a_requeued_job_resumes(tmp_path):
    proc = _submit(tmp_path, 0, SLURM_RESTART_COUNT="2")
    assert proc.returncode == 0, proc.stderr
    assert _lines(tmp_path / "srun_args")[3:6] == ["--slurm", "--resume", "--config-file"]
    assert "restart 2 of job 4242: continuing with --resume" in proc.stdout


def test_the_script_outlives_the_signal_and_still_requeues(tmp_path):
    """SLURM signals the batch shell too: it must keep waiting for srun, then requeue."""
    import signal
    import time

    bin_dir = _fake_bin(tmp_path, 75)
    srun = os.path.join(bin_dir, "srun")
    text = open(srun).read().replace("exit 75", "sleep 2\nexit 75")
    open(srun, "w").write(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=bin_dir + os.pathsep + os.environ["PATH"], SLURM_SUBMIT_DIR=REPO, SLURM_JOB_ID="7", PYTHON="python")
    proc = subprocess.Popen(["bash", SCRIPT, "--config-file", "cfg.py"], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.7)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75
    assert "submit_slurm: signal received" in out
    assert _lines(tmp_path / "scontrol_args") == ["requeue", "7"]
