"""``--trust-config`` (issue 25 item 7): a run folder's config.yaml whose ``_target_`` is outside the
allow-list is refused by every tool that loads it, with a message whose advice works as printed;
with the flag (``Predictor.from_run(..., trust_config=True)``) the target runs. The targets
planted here are harmless: ``os.makedirs`` of a folder in the test's temp dir (the test mapper's
unused ``augmentation_with_crop``, which evaluation and browse_dataset build) and ``builtins.str``
giving the transformer's activation name (the model, which every tool builds)."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
TOOLS = os.path.join(REPO, "tools")
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]))


def _tool(name, *args, cwd):
    return subprocess.run([sys.executable, os.path.join(TOOLS, f"{name}.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    run = root / "run"
    proc = _tool("train_net", "--config-file", TINY_DEMO, "train.max_iter=1", f"train.output_dir={run}", cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture
def planted(trained_run, tmp_path):
    """(run folder with planted targets, the folder os.makedirs creates)."""
    run = tmp_path / "planted"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "marker"
    with open(run / "config.yaml") as f:
        cfg = yaml.safe_load(f)
    cfg["dataloader"]["test"]["mapper"]["augmentation_with_crop"] = {"_target_": "os.makedirs", "name": str(marker)}
    cfg["model"]["transformer"]["activation"] = {"_target_": "builtins.str", "object": "relu"}
    with open(run / "config.yaml", "w") as f:
        yaml.safe_dump(cfg, f)
    return run, marker


REFUSAL = ("{path}: dataloader.test.mapper.augmentation_with_crop has _target_ 'os.makedirs', which a saved config may not call (and 1 "
           "more); allowed are this project's, detectron2's and torch's building blocks and your own modules "
           "(docs/reliability.md). If you trust this file, pass --trust-config")


def test_train_net_eval_only_refuses_then_trusts(planted, tmp_path):
    run, marker = planted
    proc = _tool("train_net", "--eval-only", "--run", str(run), cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "train_net: error: " + REFUSAL.format(path=run / "config.yaml")
    assert not marker.exists()
    proc = _tool("train_net", "--eval-only", "--trust-config", "--run", str(run), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.is_dir()  # the target ran
    assert os.path.isfile(run / "eval_results.json")


def test_predictor_from_run_trust_config(planted):
    import numpy as np

    from detrex_lite.errors import ConfigError
    from detrex_lite.predictor import Predictor

    run, marker = planted
    with pytest.raises(ConfigError, match="If you trust this file, pass --trust-config"):
        Predictor.from_run(str(run), device="cpu")
    predictor = Predictor.from_run(str(run), device="cpu", trust_config=True)
    assert predictor.cfg.model.transformer.activation._target_ == "builtins.str"
    instances = predictor(np.zeros((64, 80, 3), dtype=np.uint8))
    assert len(instances) == 20


@pytest.mark.parametrize("tool", ["demo", "export_onnx", "browse_dataset"])
def test_other_tools_refuse_then_trust(planted, tmp_path, tool):
    import cv2
    import numpy as np

    run, marker = planted
    image = str(tmp_path / "image.png")
    cv2.imwrite(image, np.full((64, 80, 3), 127, dtype=np.uint8))
    args, written = {
        "demo": (["--run", str(run), "--input", image, "--output", str(tmp_path / "demo")], tmp_path / "demo" / "image.png"),
        "export_onnx": (["--run", str(run), "--output", str(tmp_path / "model.onnx"), "--no-check"], tmp_path / "model.onnx"),
        "browse_dataset": (["--config-file", str(run / "config.yaml"), "--split", "test", "--num", "1",
                            "--out", str(tmp_path / "browse")], tmp_path / "browse" / "contact_sheet.png"),
    }[tool]
    proc = _tool(tool, *args, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].endswith(REFUSAL.format(path=run / "config.yaml")), proc.stderr[-2000:]
    assert not marker.exists() and not written.exists()
    proc = _tool(tool, "--trust-config", *args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert written.is_file()
    assert marker.is_dir() == (tool == "browse_dataset")  # only browse_dataset builds the test mapper
