"""Safe resume (issue 24 point 3): ``--resume --run DIR`` takes the run's config.yaml; a config that
differs from the run's in keys the command line does not set (the first run's overrides left
out) stops with exit 2, the keys and two commands, each of which works as printed; keys set on
the command line are intended changes, allowed and logged."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]))


def _train_net(*args, cwd):
    return subprocess.run([sys.executable, TRAIN_NET, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=240)


def _run_printed(command: str, cwd):
    """A command as printed ('python tools/train_net.py ...'), run with this interpreter."""
    words = shlex.split(command)
    assert words[0] == "python" and os.path.basename(words[1]) == "train_net.py", command
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run of 3 iterations with two overrides, cut back to its checkpoint after iteration 1 (as
    if it had been stopped there)."""
    root = tmp_path_factory.mktemp("resume")
    run = root / "run"
    proc = _train_net("--config-file", TINY_DEMO, "optimizer.lr=1e-4", "train.max_iter=3", f"train.output_dir={run}",
                      cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    os.remove(run / "model_final.pth")
    (run / "last_checkpoint").write_text("model_0000001.pth")
    return run


def _copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_resume_run_folder_takes_its_config(interrupted_run, tmp_path):
    run = _copy(interrupted_run, tmp_path)
    proc = _train_net("--resume", "--run", "run", "optimizer.lr=5e-5", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Resuming at iteration 2" in out
    assert "Resuming with changes to run/config.yaml set on the command line: optimizer.lr: 0.0001 -> 5e-05" in out
    assert "Resuming with the config's optimizer settings instead of the checkpoint's: group 0 lr 1e-05 -> 5e-06; group 1 lr 0.0001 -> 5e-05" in out
    assert os.path.isfile(run / "model_final.pth")
    # the same with train.output_dir=DIR and no config file (the hint --run used to give)
    proc = _train_net("--resume", f"train.output_dir={run}", "train.max_iter=4", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming at iteration 3" in proc.stdout + proc.stderr


def test_left_out_overrides_stop_the_resume_and_both_printed_commands_work(interrupted_run, tmp_path):
    run = _copy(interrupted_run, tmp_path)
    saved = (run / "config.yaml").read_bytes()
    proc = _train_net("--resume", "--config-file", TINY_DEMO, "train.output_dir=run", cwd=str(tmp_path))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "train_net: error: --resume: the config differs from the run's run/config.yaml in keys this command line "
        "does not set: optimizer.lr: 0.0001 -> 0.0002, train.max_iter: 3 -> 4 (the first run's overrides left out?); "
        "continue the run as it was with 'python "), line
    assert (run / "config.yaml").read_bytes() == saved and not os.path.exists(run / "model_final.pth")
    as_it_was, with_changes = re.findall(r"'(python [^']*)'", line)
    assert as_it_was == f"python {TRAIN_NET} --resume --run run"
    assert with_changes == f"python {TRAIN_NET} --resume --resume-changed --config-file {TINY_DEMO} train.output_dir=run"

    proc = _run_printed(as_it_was, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming at iteration 2" in proc.stdout + proc.stderr
    assert (run / "last_checkpoint").read_text() == "model_final.pth"

    proc = _run_printed(with_changes, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Resuming at iteration 3" in out  # on to the config's 4 iterations
    assert ("Resuming with changes to run/config.yaml not set on the command line (--resume-changed): "
            "optimizer.lr: 0.0001 -> 0.0002, train.max_iter: 3 -> 4") in out


def test_run_without_eval_only_or_resume_names_a_working_command(interrupted_run, tmp_path):
    _copy(interrupted_run, tmp_path)
    proc = _train_net("--run", "run", cwd=str(tmp_path))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("train_net: error: --run run is for --eval-only (evaluate the run) or --resume (continue it): e.g. '")
    (command,) = re.findall(r"'(python [^']*)'", line)
    proc = _run_printed(command, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming at iteration 2" in proc.stdout + proc.stderr


def test_config_changes_ignore_representation(tmp_path):
    from detectron2.config import LazyConfig

    from detrex_lite.engine.resume_check import config_changes, override_keys, set_on_command_line

    cfg = LazyConfig.load(TINY_DEMO)
    cfg.model.num_classes = 6  # as train_net saves it (num_classes_from_dataset resolved)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    assert config_changes(path, cfg) == []
    cfg.train.max_iter = 4.0  # the same number written as a float
    cfg.optimizer.lr = 1e-5  # optimizer.params.base_lr refers to it: one key changes, not two
    cfg.train.new_key = "x"
    assert config_changes(path, cfg) == [("optimizer.lr", 0.0002, 1e-05), ("train.new_key", "(absent)", "x")]
    keys = override_keys(["optimizer.lr=1e-5", "+train.new_key=x", "model.backbone={}"])
    assert keys == ["optimizer.lr", "train.new_key", "model.backbone"]
    assert set_on_command_line("model.backbone.depth", keys) and not set_on_command_line("model.backbone_x", keys)
