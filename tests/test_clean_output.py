"""What a training run prints and writes: no colour codes in log.txt, no import-time warnings,
strict JSON (NaN -> null), periods from fractions of max_iter, a finished run not trained again;
train_net's --help and its message for a flag written after the overrides; benchmark's table."""
import json
import math
import os

import numpy as np
import pytest

from detrex_lite.utils.json_io import dumps, finite_or_none
from test_train_net import TOY_CONFIG, _train_net_module, read_metrics, run_train_net


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_finite_or_none_and_dumps():
    data = {"a": float("nan"), "b": [np.float32("inf"), 1.5, (2, np.int64(3))], "c": {"d": -math.inf, "e": "x"}}
    assert finite_or_none(data) == {"a": None, "b": [None, 1.5, [2, 3]], "c": {"d": None, "e": "x"}}
    assert _strict_json(dumps(data)) == finite_or_none(data)
    assert dumps(np.array([1.0, np.nan])) == "[1.0, null]"
    with pytest.raises(TypeError):
        dumps({"s": {1, 2}})  # still refuses what JSON cannot hold


@pytest.mark.slow  # two training runs in subprocesses (~20 s on an idle 2-core CPU)
def test_training_run_output_is_clean_and_a_finished_run_is_not_repeated(tmp_path):
    out = str(tmp_path / "run")
    args = ["--config-file", TOY_CONFIG, f"train.output_dir={out}", "train.max_iter=2",
            "train.checkpointer={period: 0.5, max_to_keep: 5}"]
    proc = run_train_net(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stream in (proc.stdout, proc.stderr):
        assert "FutureWarning" not in stream and "torch.jit.script" not in stream
        assert "CUDA_HOME" not in stream
        assert "\x1b[" not in stream  # not a terminal: no colour
    log = open(os.path.join(out, "log.txt")).read()
    assert "\x1b" not in log and "Contents of args.config_file=" in log and "Environment info:" in log
    # checkpointer.period=0.5 of max_iter=2: a checkpoint every iteration.
    assert "checkpoint every 1 (train.checkpointer.period=0.5)" in log
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == [
        "model_0000000.pth", "model_0000001.pth", "model_best.pth", "model_final.pth"]
    # metrics.json: strict JSON on every line; the demo val set has no large object: APl is null.
    lines = open(os.path.join(out, "metrics.json")).read().splitlines()
    rows = [_strict_json(line) for line in lines]
    (evaluation,) = [r for r in rows if "bbox/AP" in r]
    assert evaluation["bbox/APl"] is None and evaluation["iteration"] == 2

    proc = run_train_net("--resume", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "Nothing to resume" in line]
    assert len(said) == 1 and "finished training at iteration 2 of train.max_iter=2" in said[0]
    assert open(os.path.join(out, "metrics.json")).read().splitlines() == lines  # no second evaluation row
    assert len([r for r in read_metrics(out) if "bbox/AP" in r]) == 1


def test_train_net_help_shows_lazyconfig_usage(capsys):
    train_net = _train_net_module()
    with pytest.raises(SystemExit) as exit_info:
        train_net.get_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "MODEL.WEIGHTS" not in text and "Yacs" not in text and "SOLVER.BASE_LR" not in text
    assert "--eval-only train.init_checkpoint=" in text and "train.max_iter=1000" in text
    assert "overrides (key=value) come after the flags" in text


@pytest.mark.parametrize("flag", ["--eval-only", "--resume", "--num-gpus"])
def test_flag_after_override_is_named(flag, tmp_path, capsys):
    rc = _train_net_module().cli(["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=10", flag])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"train_net: error: flag {flag} comes after the config override 'train.output_dir=")
    assert not os.listdir(tmp_path)


def _report(device="cpu", compare=False):
    rows = [{"model": "detrex_lite", "mode": "inference", "precision": "fp32", "batch_size": 1,
             "images_per_s": 2.0, "ms_per_iter": 500.0, "peak_mem_mb": 1000.0}]
    report = {
        "image_size": [64, 64], "iters": 3, "warmup": 1, "results": rows,
        "environment": {"device": device, "device_name": "Some Chip", "torch": "2.x", "cuda": "13.0",
                        "cudnn": 91000, "num_threads": 2},
    }
    if compare:
        rows.append(dict(rows[0], model="hf_transformers", images_per_s=1.0, ms_per_iter=1000.0))
        report["hf_transformers"] = {"version": "5.0", "attention": "grid_sample"}
        report["comparison"] = [{"mode": "inference", "precision": "fp32", "batch_size": 1, "speed_ratio": 2.0}]
    return report


def test_benchmark_table_columns_and_header():
    from detrex_lite.benchmark.report import describe_row, format_table

    cpu = format_table(_report("cpu"))
    header, columns = cpu.splitlines()[:2]
    assert "CUDA" not in header and "2 threads" in header and "Some Chip (cpu" in header
    assert "x HF fp32" not in cpu and "model" not in columns and "2.00 img/s" in cpu and "{" not in cpu
    cuda = format_table(_report("cuda:0"))
    assert "CUDA 13.0" in cuda.splitlines()[0] and "peak MB" in cuda
    compared = format_table(_report("cpu", compare=True))
    assert "x HF fp32" in compared and "hf_transformers" in compared and "2.00x" in compared
    line = describe_row(_report()["results"][0])
    assert line == "detrex_lite inference fp32 batch 1: 2.00 img/s (500.0 ms/iter)"
