"""tools/train_net.py as users run it (a subprocess) on the demo dataset with the toy detector of
tests/configs/toy_detector_demo.py: config errors, train -> --eval-only -> --resume, a non-finite
loss, and two CPU processes with gloo."""
import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
TOY_CONFIG = os.path.join(REPO, "tests", "configs", "toy_detector_demo.py")


def run_train_net(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, TRAIN_NET, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_net_module():
    """train_net's command line as a module (get_parser, cli), as tools/train_net.py runs it."""
    return importlib.import_module("detrex_lite.cli.train_net")


# ------------------------------------------------------------------ config errors (exit code 2)
def test_unknown_override_is_one_line_exit_2(tmp_path):
    proc = run_train_net("--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_itr=10")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train_net:")]
    assert lines == [
        "train_net: error: unknown config key 'train.max_itr' (did you mean 'train.max_iter'?); "
        "write '+train.max_itr=10' to add a new key"
    ]
    assert "Traceback" not in proc.stderr
    assert not os.listdir(tmp_path)  # nothing built, nothing written


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train.max_iter=abc"], "override train.max_iter=abc: expected int (current value 20), got str 'abc'"),
        (["model.num_classes=80"], "model.num_classes=80 but dataset detrex_demo_train has 6 thing_classes"),
        (["train.init_checkpoint=/nonexistent/w.pth"], "train.init_checkpoint: file not found: /nonexistent/w.pth"),
        (["--eval-only"], "--eval-only needs weights"),
        (["--num-machines", "2"], "--num-machines > 1 needs --dist-url"),
        (["train.amp.enabled=True", "train.amp.dtype=fp16"], "train.amp.dtype='fp16': expected one of float16, bfloat16"),
    ],
)
def test_config_errors_in_process(argv, message, capsys, tmp_path):
    train_net = _train_net_module()
    options = [a for a in argv if a.startswith("--") or a.isdigit()]
    overrides = [a for a in argv if a not in options]
    rc = train_net.cli(["--config-file", TOY_CONFIG, *options, f"train.output_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("train_net: error: ") and message in err and err.count("\n") == 1, err
    assert not os.listdir(tmp_path)


def test_missing_config_file(capsys, tmp_path):
    rc = _train_net_module().cli(["--config-file", str(tmp_path / "missing.py")])
    assert rc == 2
    assert capsys.readouterr().err == f"train_net: error: config file not found: {tmp_path / 'missing.py'}\n"


# ------------------------------------------------------------------ train -> eval -> resume
@pytest.mark.slow
def test_train_eval_resume(tmp_path):
    out = str(tmp_path / "run")
    common = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.checkpointer.period=3"]
    proc = run_train_net(*common, "train.max_iter=6", "train.model_ema.enabled=True", "train.model_ema.decay=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(out)
    train_rows = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in train_rows] == list(range(6))
    # metrics.json holds windowed medians; the first row is a single value, so it must add up.
    assert train_rows[0]["total_loss"] == pytest.approx(train_rows[0]["loss_class"] + train_rows[0]["loss_bbox"], rel=1e-5)
    assert any("bbox/AP" in m for m in metrics)  # evaluation after training
    assert open(os.path.join(out, "last_checkpoint")).read() == "model_final.pth"
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000002.pth", "model_0000005.pth", "model_best.pth", "model_final.pth"]
    assert os.path.samefile(os.path.join(out, "model_final.pth"), os.path.join(out, "model_0000005.pth"))  # stored once
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 5 and ckpt["trainer"]["iteration"] == 5
    assert ckpt["model_ema"]["num_updates"] == 6
    w = "class_head.weight"
    assert not torch.equal(ckpt["model_ema"]["shadow"][w], ckpt["model"][w])  # a real average
    adam_steps = {int(s["step"]) for s in ckpt["trainer"]["optimizer"]["state"].values()}
    assert adam_steps == {6}
    # The saved config reloads and builds the same model (no lambdas, no unpicklable objects).
    from detectron2.config import LazyConfig, instantiate

    saved = LazyConfig.load(os.path.join(out, "config.yaml"))
    assert saved.train.max_iter == 6 and saved.train.model_ema.enabled is True
    rebuilt = instantiate(saved.model)
    assert rebuilt.load_state_dict(ckpt["model"]) is not None and rebuilt.num_classes == 6

    # --eval-only from the saved checkpoint, with its EMA weights.
    eval_out = str(tmp_path / "eval")
    proc = run_train_net(
        "--config-file", TOY_CONFIG, "--eval-only", f"train.output_dir={eval_out}",
        f"train.init_checkpoint={out}/model_final.pth", "train.model_ema.enabled=True",
        "train.model_ema.use_ema_weights_for_eval_only=True",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(os.path.join(eval_out, "eval_results.json")))
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0.0 <= results["bbox"]["AP50"] <= 100.0
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in proc.stdout + proc.stderr
    assert "Evaluating the EMA weights" in proc.stdout + proc.stderr

    # --resume with a longer schedule continues at iteration 6 with the optimizer state.
    proc = run_train_net("--resume", *common, "train.max_iter=8", "train.model_ema.enabled=True", "train.model_ema.decay=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming at iteration 6" in proc.stdout + proc.stderr
    train_rows = [m for m in read_metrics(out) if "total_loss" in m]
    assert [m["iteration"] for m in train_rows] == list(range(6)) + [6, 7]
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["iteration"] == 7
    assert {int(s["step"]) for s in ckpt["trainer"]["optimizer"]["state"].values()} == {8}
    assert ckpt["model_ema"]["num_updates"] == 8


def test_non_finite_loss_names_iteration_terms_and_checkpoint(tmp_path):
    out = str(tmp_path)
    proc = run_train_net(
        "--config-file", TOY_CONFIG, f"train.output_dir={out}", "optimizer.lr=1e30",
        "train.clip_grad.enabled=False", "train.checkpointer.period=1", "train.eval_period=0",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("train_net: error:")]
    assert "non-finite loss at iteration " in line and "loss_class=" in line and "loss_bbox=" in line
    iteration = int(line.split("non-finite loss at iteration ")[1].split(":")[0])
    assert iteration >= 1
    assert f"last good checkpoint: {out}/model_{iteration - 1:07d}.pth" in line
    # No metrics written for the bad iteration, and the checkpoint named is loadable.
    assert max(m["iteration"] for m in read_metrics(out)) == iteration - 1
    torch.load(os.path.join(out, f"model_{iteration - 1:07d}.pth"), weights_only=False)


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tmp_path):
    out = str(tmp_path)
    proc = run_train_net("--config-file", TOY_CONFIG, "--num-gpus", "2", f"train.output_dir={out}", "train.max_iter=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(os.path.join(out, "log.txt")).read()
    assert "Rank of current process: 0. World size: 2" in log
    rank1_log = open(os.path.join(out, "log.txt.rank1")).read()
    assert "Rank of current process: 1. World size: 2" in rank1_log
    # Rank 0 alone writes checkpoints and metrics (one row per iteration, not two).
    assert [m["iteration"] for m in read_metrics(out) if "total_loss" in m] == [0, 1, 2, 3]
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["model_best.pth", "model_final.pth"]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in proc.stdout + proc.stderr
    # Each spawned worker imports detectron2 without its torch.jit.script deprecation warning.
    assert "torch.jit.script" not in proc.stderr


@pytest.mark.parametrize("value", ["0", "-1"])
def test_num_gpus_below_one_is_an_error(value, capsys, tmp_path):
    rc = _train_net_module().cli(["--config-file", TOY_CONFIG, "--num-gpus", value, f"train.output_dir={tmp_path}"])
    assert rc == 2
    assert capsys.readouterr().err == (
        f"train_net: error: --num-gpus {value}: expected at least 1 (processes per machine; on a CPU-only "
        "machine 1 or more CPU processes)\n"
    )
    assert not os.listdir(tmp_path)


def test_dataset_registered_in_the_config_file(tmp_path):
    """The simplest way to train on your own data: register it at the top of the config file
    (train_net runs the file once per process, and registering the same files again is a no-op)."""
    from tests.test_data_coco import write_coco

    json_file, image_root = write_coco(tmp_path / "data")
    config = tmp_path / "my_config.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from detrex_lite.data import register_coco_dataset\n\n"
        f"register_coco_dataset('config_file_dataset', {json_file!r}, {image_root!r})\n"
        f"_base = LazyConfig.load({TOY_CONFIG!r})\n"
        "model, optimizer, lr_multiplier, train, dataloader = (\n"
        "    _base.model, _base.optimizer, _base.lr_multiplier, _base.train, _base.dataloader)\n"
        "dataloader.train.dataset.names = 'config_file_dataset'\n"
        "dataloader.pop('evaluator')\n"
    )
    out = str(tmp_path / "run")
    proc = run_train_net("--config-file", str(config), f"train.output_dir={out}", "train.max_iter=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert ckpt["model"]["class_head.weight"].shape[0] == 3 + 1  # the dataset's 3 classes + "no object"


def test_diverged_run_writes_no_non_finite_checkpoint(tmp_path):
    """A step whose gradient is NaN (finite loss) without clipping turns the weights into NaN:
    the checkpoint of that iteration is refused, nothing is named latest, one line, exit 1."""
    out = str(tmp_path)
    proc = run_train_net(
        "--config-file", TOY_CONFIG, f"train.output_dir={out}", "+model.nan_gradient=True",
        "train.clip_grad.enabled=False", "train.checkpointer.period=1",
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("train_net: error:")]
    assert line.startswith("train_net: error: non-finite weights at iteration 0: ")
    assert "(model.query_embed.weight, " in line and "model_0000000.pth was not written" in line
    assert line.endswith("last good checkpoint: none saved yet (start again with a lower optimizer.lr, or with "
                         "train.amp.enabled=False)")
    assert not [f for f in os.listdir(out) if f.endswith(".pth") or f == "last_checkpoint"]


# ------------------------------------------------------------------ output folder and resume faults, one line each
def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    """An output folder whose lock cannot be created (here: the lock path is a folder; a
    read-only folder gives the same path through the lock) used to end in a traceback."""
    out = tmp_path / "run"
    (out / "train_net.lock").mkdir(parents=True)
    rc = _train_net_module().cli(["--config-file", TOY_CONFIG, f"train.output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == f"train_net: error: the lock path {out / 'train_net.lock'} is a directory: remove it to use output folder {out}"


def test_resume_over_only_unloadable_checkpoints_exits_2_and_keeps_them(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000004.pth").write_bytes(b"truncated")
    (out / "last_checkpoint").write_bytes(bytes(range(200)))  # damaged too
    rc = _train_net_module().cli(["--resume", "--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err[-5:]
    assert err[-1].startswith(f"train_net: error: --resume: no checkpoint in {out} can be loaded")
    assert (out / "model_0000004.pth").read_bytes() == b"truncated"


def test_damaged_last_checkpoint_falls_back_to_the_newest_other(tmp_path, caplog):
    from detrex_lite.checkpoint.run import find_run_checkpoint

    (tmp_path / "model_0000004.pth").write_bytes(b"x")
    (tmp_path / "model_0000009.pth").write_bytes(b"x")
    for content in (bytes(range(256)), b"../../etc/passwd", b""):
        (tmp_path / "last_checkpoint").write_bytes(content)
        with caplog.at_level("WARNING"):
            assert find_run_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000009.pth")


@pytest.fixture
def fresh_log_handlers():
    """In-process runs set up the loggers with handlers on pytest's captured stdout, which is
    closed after each test: a later in-process run would print "--- Logging error ---" tracebacks
    for those. Drop them before the test and the test's own after it."""
    import logging

    from detectron2.utils.logger import setup_logger
    from detrex_lite.engine.run_setup import LOGGER_NAMES

    def drop(only_closed: bool):
        for name in LOGGER_NAMES:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if getattr(getattr(handler, "stream", None), "closed", False) or not only_closed:
                    logger.removeHandler(handler)
        setup_logger.cache_clear()

    drop(only_closed=True)
    yield
    drop(only_closed=False)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize(
    "failing", ["inference/detrex_demo_val/instances_predictions.pth", "inference/detrex_demo_val/coco_instances_results.json",
                "eval_results.json"],
)
def test_full_disk_during_evaluation_is_one_line_and_keeps_the_previous_files(tmp_path, capsys, failing, fresh_log_handlers):
    """--eval-only on a full disk (the file's temporary is a link to /dev/full: every write
    fails with ENOSPC): one line naming the file, exit 1 (as for a checkpoint that cannot be
    written), the previous file whole, no temporary left. It used to leave a truncated 8 KB
    instances_predictions.pth and a traceback."""
    from detectron2.config import LazyConfig, instantiate

    out = tmp_path / "eval"
    weights = tmp_path / "toy.pth"
    torch.manual_seed(0)
    torch.save({"model": instantiate(LazyConfig.load(TOY_CONFIG).model).state_dict()}, weights)
    (out / "inference" / "detrex_demo_val").mkdir(parents=True)
    (out / failing).write_bytes(b"the previous evaluation")
    os.symlink("/dev/full", (out / failing).parent / f".{os.path.basename(failing)}.tmp.{os.getpid()}")
    rc = _train_net_module().cli(["--eval-only", "--config-file", TOY_CONFIG, f"train.output_dir={out}",
                                  f"train.init_checkpoint={weights}"])
    err = capsys.readouterr().err
    assert rc == 1, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"train_net: error: cannot write {out / failing} (OSError: [Errno 28] No space left on device); free space in ")
    assert err.strip().endswith("nothing was replaced (free some space and evaluate again)")
    assert (out / failing).read_bytes() == b"the previous evaluation"
    assert not [f for f in os.listdir((out / failing).parent) if ".tmp." in f]


def test_first_dataset_dicts_beyond_the_dataset_is_one_line(tmp_path):
    """dataloader.test.dataset.num_images above the dataset's size: one line naming the dataset,
    the value and the size, exit 1 (it was a ValueError traceback from inside the data loader)."""
    from detectron2.config import LazyConfig

    from tools_tiny_models import save_tiny_checkpoint

    config = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
    save_tiny_checkpoint(LazyConfig.load(config), str(tmp_path), class_bias_std=1.0)
    proc = run_train_net("--config-file", config, "--eval-only", f"train.output_dir={tmp_path / 'eval'}",
                         f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
                         "dataloader.test.dataset.num_images=1000", timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "train_net: error: first_dataset_dicts('detrex_demo_val'): num_images=1000, expected 1..100 "
        "(the dataset has 100 images)"
    )
