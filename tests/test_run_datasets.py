"""A dataset registered in the user's config file is known wherever the run is used (issue 24
point 2): the run records how its datasets were registered (datasets.json and the checkpoint's
metadata), and train_net --eval-only --run, analyze_results, visualize_results and demo register
them again in a fresh process; --gt-json FILE --image-root DIR takes data registered nowhere;
an unknown name is answered with the user's datasets and the closest names, not detectron2's
builtins."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]))
TOOLS = os.path.join(REPO, "tools")

USER_CONFIG = """\
import os
from detectron2.config import LazyConfig
from detectron2.data.datasets import register_coco_instances
from detrex_lite.data import register_coco_dataset

_DATA = {data!r}
register_coco_instances("my_train", {{}}, os.path.join(_DATA, "annotations/instances_train.json"),
                        os.path.join(_DATA, "train"))
register_coco_dataset("my_val", os.path.join(_DATA, "annotations/instances_val.json"), os.path.join(_DATA, "val"))

_base = LazyConfig.load({tiny!r})
model, optimizer, lr_multiplier, train, dataloader = (
    _base.model, _base.optimizer, _base.lr_multiplier, _base.train, _base.dataloader)
dataloader.train.dataset.names = "my_train"
dataloader.test.dataset.names = "my_val"
dataloader.test.dataset.num_images = 4
"""


def _tool(name, *args, cwd, timeout=240):
    return subprocess.run([sys.executable, os.path.join(TOOLS, f"{name}.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """(run folder, data folder): 2 iterations on a COCO dataset the config file registers, the
    train split with detectron2's register_coco_instances, the val split with register_coco_dataset."""
    from detrex_lite.data import generate_demo_dataset

    root = tmp_path_factory.mktemp("custom")
    data = str(root / "data")
    generate_demo_dataset(data, num_train=4, num_val=4)
    config = root / "my_config.py"
    config.write_text(USER_CONFIG.format(data=data, tiny=TINY_DEMO))
    run = str(root / "run")
    proc = _tool("train_net", "--config-file", str(config), "train.max_iter=2", f"train.output_dir={run}", cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, data


def test_run_records_how_its_datasets_were_registered(custom_run):
    run, data = custom_run
    expected = {
        "my_train": {"json_file": os.path.join(data, "annotations", "instances_train.json"),
                     "image_root": os.path.join(data, "train"), "loader": "detectron2"},
        "my_val": {"json_file": os.path.join(data, "annotations", "instances_val.json"),
                   "image_root": os.path.join(data, "val"), "loader": "detrex_lite"},
    }
    with open(os.path.join(run, "datasets.json")) as f:
        assert json.load(f) == expected
    meta = torch.load(os.path.join(run, "model_final.pth"), weights_only=True)["meta"]
    assert meta["datasets"] == expected  # a copied checkpoint alone is enough


def test_demo_run_records_builtin_datasets(tmp_path):
    from detrex_lite.data.registration import dataset_records

    assert dataset_records(["detrex_demo_val", "coco_2017_val", "not_registered"]) == {
        "detrex_demo_val": {"builtin": True}, "coco_2017_val": {"builtin": True}}


def test_every_tool_registers_the_run_datasets_in_a_fresh_process(custom_run, tmp_path):
    run, data = custom_run
    proc = _tool("train_net", "--eval-only", "--run", run, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(run, "eval_results.json")) as f:
        assert 0.0 <= json.load(f)["bbox"]["AP"] <= 100.0

    predictions = os.path.join(run, "inference", "my_val", "coco_instances_results.json")
    image = os.path.join(data, "val", "000002.jpg")
    with open(os.path.join(data, "annotations", "instances_val.json")) as f:
        image_id = next(i["id"] for i in json.load(f)["images"] if i["file_name"] == "000002.jpg")
    script = textwrap.dedent(f"""
        import json
        from detectron2.data import DatasetCatalog
        from tools_tiny_models import load_tool
        assert "my_val" not in DatasetCatalog.list()
        rcs = [
            load_tool("analyze_results").main(["--predictions", {predictions!r}, "--dataset", "my_val",
                                               "--out", {str(tmp_path / "analysis")!r}, "--no-class-plots"]),
            load_tool("visualize_results").main(["--predictions", {predictions!r}, "--dataset", "my_val",
                                                 "--out", {str(tmp_path / "pictures")!r}, "--num", "1"]),
            load_tool("demo").main(["--run", {run!r}, "--dataset", "my_val", "--input", {image!r},
                                    "--output", {str(tmp_path / "demo")!r}, "--json", "--confidence-threshold", "0"]),
        ]
        print(json.dumps(rcs))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 0, 0]
    assert os.path.isfile(tmp_path / "analysis" / "per_class_ap.json")
    assert len(os.listdir(tmp_path / "pictures")) == 1
    with open(tmp_path / "demo" / "detections.json") as f:
        assert {d["image_id"] for d in json.load(f)} == {image_id}  # the dataset's id: its ground truth was found


def test_a_checkpoint_alone_registers_its_datasets(custom_run, tmp_path):
    run, _ = custom_run
    for name in ("config.yaml", "model_final.pth"):  # no datasets.json beside them
        shutil.copy(os.path.join(run, name), tmp_path / name)
    proc = _tool("train_net", "--eval-only", "--config-file", str(tmp_path / "config.yaml"),
                 f"train.init_checkpoint={tmp_path / 'model_final.pth'}", f"train.output_dir={tmp_path / 'eval'}",
                 cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "eval" / "eval_results.json")


def test_gt_json_for_data_registered_nowhere(custom_run, tmp_path):
    run, data = custom_run
    predictions = str(tmp_path / "predictions.json")  # outside the run: nothing recorded beside it
    shutil.copy(os.path.join(run, "inference", "my_val", "coco_instances_results.json"), predictions)
    gt_json = os.path.join(data, "annotations", "instances_val.json")
    proc = _tool("analyze_results", "--predictions", predictions, "--dataset", "my_val", "--out", str(tmp_path / "a"),
                 cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("pass --gt-json FILE --image-root DIR for data registered nowhere")
    proc = _tool("analyze_results", "--predictions", predictions, "--gt-json", gt_json, "--out", str(tmp_path / "a"),
                 "--no-class-plots", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "instances_val.json: " in proc.stdout  # the dataset is named after the json
    proc = _tool("visualize_results", "--predictions", predictions, "--gt-json", gt_json, "--out", str(tmp_path / "v"),
                 cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(f"--gt-json {gt_json} needs --image-root DIR (the folder of its images)")
    proc = _tool("visualize_results", "--predictions", predictions, "--gt-json", gt_json, "--image-root",
                 os.path.join(data, "val"), "--out", str(tmp_path / "v"), "--num", "2", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(os.listdir(tmp_path / "v")) == 2


def test_unknown_names_list_the_users_datasets_and_the_closest(custom_run, tmp_path):
    run, _ = custom_run
    predictions = os.path.join(run, "inference", "my_val", "coco_instances_results.json")
    proc = _tool("analyze_results", "--predictions", predictions, "--dataset", "my_vall", "--out", str(tmp_path),
                 cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "analyze_results: error: unknown dataset 'my_vall': not registered (closest: my_val; the config's datasets: "
        "my_train, my_val; registered by your code: none); pass --gt-json FILE --image-root DIR for data "
        "registered nowhere")
    proc = _tool("train_net", "--eval-only", "--run", run, "dataloader.test.dataset.names=my_vall",
                 f"train.output_dir={tmp_path / 'eval'}", cwd=str(tmp_path))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("train_net: error: dataset 'my_vall' is not registered (closest: my_val;"), line
    assert "coco_2017_val" not in line and "ade20k" not in line and len(line) < 400


def test_a_moved_json_is_named(custom_run, tmp_path):
    run, _ = custom_run
    moved = tmp_path / "run"
    moved.mkdir()
    for name in ("config.yaml", "model_final.pth", "last_checkpoint", "model_0000001.pth"):
        shutil.copy(os.path.join(run, name), moved / name)
    with open(os.path.join(run, "datasets.json")) as f:
        records = json.load(f)
    records["my_val"]["json_file"] = str(tmp_path / "gone.json")
    (moved / "datasets.json").write_text(json.dumps(records))
    proc = _tool("train_net", "--eval-only", "--run", str(moved), cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"train_net: error: dataset 'my_val' (recorded in {moved / 'datasets.json'}): annotation file not found: "
        f"{tmp_path / 'gone.json'}; register the dataset in your config, or move the files back")
