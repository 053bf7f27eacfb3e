"""A training output folder is a model: train the tiny demo in a subprocess, then use the folder
from fresh processes that register no dataset (Predictor.from_run, demo.py --run,
export_onnx.py --run, train_net.py --eval-only --run). Also: predictions are kept under
output_dir/inference/<dataset>/, and unusable init/eval checkpoints end in one line."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]))


def _run(args, cwd, timeout=240):
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "run")
    proc = _run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY_DEMO,
         "train.max_iter=2", f"train.output_dir={out}"],
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_training_saves_what_inference_needs(run_dir):
    with open(os.path.join(run_dir, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["model"]["num_classes"] == 6  # an int, not num_classes_from_dataset(...)
    meta = torch.load(os.path.join(run_dir, "model_final.pth"), weights_only=True)["meta"]
    assert meta["thing_classes"] == ["circle", "square", "triangle", "cross", "ring", "bar"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {i + 1: i for i in range(6)}
    assert meta["num_classes"] == 6 and meta["use_ema_weights"] is False
    assert meta["pixel_mean"] == [123.675, 116.28, 103.53] and meta["pixel_std"] == [58.395, 57.12, 57.375]
    assert meta["test_resize"] == {"short_edge_length": [64, 64], "max_size": 96}
    assert meta["arch"] == {
        "meta_architecture": "DeformableDETR", "with_box_refine": False, "as_two_stage": False,
        "num_feature_levels": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "num_queries": 20,
        "d_model": 32, "num_classes": 6,
    }
    # the periodic/final evaluation kept its predictions (standard COCO results json)
    results_dir = os.path.join(run_dir, "inference", "detrex_demo_val")
    with open(os.path.join(results_dir, "coco_instances_results.json")) as f:
        results = json.load(f)
    assert results and set(results[0]) >= {"image_id", "category_id", "bbox", "score"}
    assert {r["category_id"] for r in results} <= set(range(1, 7))
    assert os.path.isfile(os.path.join(results_dir, "instances_predictions.pth"))
    # the evaluation at the end runs before model_final.pth is written (it holds what it found)
    with open(os.path.join(run_dir, "log.txt")) as f:
        log = f.read()
    assert log.index("coco_instances_results.json") < log.index("model_final.pth")


def test_predict_demo_export_from_run_in_a_fresh_process(run_dir, tmp_path):
    """One fresh process (cwd elsewhere): Predictor.from_run, demo.py --run and export_onnx.py
    --run. Importing detrex_lite.data registers the demo datasets; the process removes them from
    detectron2's catalogs first, so nothing the tools do can lean on them."""
    script = textwrap.dedent(
        f"""
        import json, numpy as np, cv2
        import detrex_lite.data
        from detectron2.data import DatasetCatalog, MetadataCatalog
        for name in [n for n in DatasetCatalog.list() if n.startswith("detrex_demo")]:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        from detrex_lite.predictor import Predictor
        from tools_tiny_models import load_tool

        image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
        cv2.imwrite({str(tmp_path / "image.png")!r}, image)
        predictor = Predictor.from_run({run_dir!r})
        instances = predictor({str(tmp_path / "image.png")!r})
        demo_rc = load_tool("demo").main(["--run", {run_dir!r}, "--input", {str(tmp_path / "image.png")!r},
                                          "--output", {str(tmp_path / "demo")!r}, "--json",
                                          "--confidence-threshold", "0"])
        from detrex_lite.export.onnx_tool import export_onnx_cli
        from detrex_lite.export.options import parse_export_onnx_args
        export_rc = export_onnx_cli(parse_export_onnx_args(["--run", {run_dir!r}, "--output", {str(tmp_path / "model.onnx")!r}]))
        print(json.dumps(dict(
            checkpoint=predictor.checkpoint, classes=list(predictor.metadata.thing_classes),
            num=len(instances), size=list(instances.image_size), demo_rc=demo_rc, export_rc=export_rc,
            registered=[n for n in DatasetCatalog.list() if n.startswith("detrex_demo")],
        )))
        """
    )
    proc = _run([sys.executable, "-c", script], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["checkpoint"] == os.path.join(run_dir, "model_best.pth")  # the best evaluation's weights
    assert got["classes"] == ["circle", "square", "triangle", "cross", "ring", "bar"]
    assert got["num"] == 20 and got["size"] == [90, 120]
    assert got["demo_rc"] == 0 and got["export_rc"] == 0
    assert got["registered"] == []
    with open(tmp_path / "demo" / "detections.json") as f:
        detections = json.load(f)
    assert len(detections) == 20 and {d["category_id"] for d in detections} <= set(range(1, 7))
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_eval_only_from_run(run_dir, tmp_path):
    out = str(tmp_path / "eval")
    proc = _run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--eval-only", "--run", run_dir,
         f"train.output_dir={out}"],
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Loaded {os.path.join(run_dir, 'model_best.pth')} for eval" in proc.stderr + proc.stdout
    with open(os.path.join(out, "eval_results.json")) as f:
        assert "AP" in json.load(f)["bbox"]
    assert os.path.isfile(os.path.join(out, "inference", "detrex_demo_val", "coco_instances_results.json"))


def test_eval_only_in_the_run_folder_keeps_its_training_config(run_dir, tmp_path):
    """`--eval-only --run DIR k=v` evaluating into DIR itself used to rewrite DIR's config.yaml
    with the eval-time settings, which Predictor.from_run, demo and export then used."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    before = open(os.path.join(run, "config.yaml"), "rb").read()
    proc = _run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--eval-only", "--run", run,
         "dataloader.test.mapper.augmentation.min_size=32"],
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert open(os.path.join(run, "config.yaml"), "rb").read() == before
    with open(os.path.join(run, "eval_config.yaml")) as f:
        assert yaml.safe_load(f)["dataloader"]["test"]["mapper"]["augmentation"]["min_size"] == 32
    assert not [n for n in os.listdir(run) if ".tmp." in n]


def _train_net():
    from detrex_lite.cli import train_net

    return train_net


def test_eval_only_with_another_class_count_fails(run_dir, tmp_path, capsys):
    """Issue 17 item 4: no AP from randomly initialised class heads."""
    checkpoint = torch.load(os.path.join(run_dir, "model_final.pth"), weights_only=True)
    for key in list(checkpoint["model"]):
        if key.startswith("class_embed."):
            value = checkpoint["model"][key]
            checkpoint["model"][key] = torch.cat([value, value[:1]])  # 7 classes
    checkpoint["meta"]["num_classes"] = checkpoint["meta"]["arch"]["num_classes"] = 7
    bad = str(tmp_path / "seven_classes.pth")
    torch.save(checkpoint, bad)
    rc = _train_net().cli(
        ["--eval-only", "--run", run_dir, f"train.init_checkpoint={bad}", f"train.output_dir={tmp_path / 'out'}"]
    )
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 1
    assert last.startswith(f"train_net: error: {bad} does not fit the model (eval): ")
    assert "the checkpoint has 7 classes, the config 6 (set model.num_classes=7" in last


@pytest.mark.parametrize("kind", ["text", "empty"])
def test_unreadable_init_checkpoint_is_one_line(tmp_path, capsys, kind):
    bad = tmp_path / f"{kind}.pth"
    bad.write_text("not a checkpoint\n" if kind == "text" else "")
    rc = _train_net().cli(
        ["--config-file", TINY_DEMO, f"train.init_checkpoint={bad}", f"train.output_dir={tmp_path / 'out'}"]
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    assert last.startswith(f"train_net: error: {bad}: ")
    assert ("is a text file" if kind == "text" else "the file is empty") in last
