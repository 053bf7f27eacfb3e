"""tools/browse_dataset.py: per-class and size counts equal those of the annotation file, the
drawn samples are what the config's mapper gives (augmented sizes in the configured ranges;
--raw and --split test keep every box), the contact sheet and one PNG per sample are written."""
import json
import os

import pytest
from PIL import Image

from tests.tools_analysis_data import TRAIN, VAL, register_small_demo
from tests.tools_tiny_models import REPO, load_tool

browse_dataset = load_tool("browse_dataset")
CONFIG = os.path.join(REPO, "projects/deformable_detr/configs/deformable_detr_r18_demo.py")
NAMES = [f"dataloader.train.dataset.names={TRAIN}", f"dataloader.test.dataset.names={VAL}"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return register_small_demo(str(tmp_path_factory.mktemp("browse")))


def annotation_counts(json_file):
    with open(json_file) as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = {n: 0 for n in names.values()}
    sizes = {"small": 0, "medium": 0, "large": 0}
    per_image = {}
    for a in data["annotations"]:
        per_class[names[a["category_id"]]] += 1
        area = a["bbox"][2] * a["bbox"][3]
        sizes["small" if area < 1024 else "medium" if area < 9216 else "large"] += 1
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    return per_class, sizes, per_image


def run(argv):
    return browse_dataset.main(argv)


def test_train_augmentation(folder, tmp_path, capsys):
    out = tmp_path / "train"
    assert run(["--config-file", CONFIG, "--num", "4", "--out", str(out), *NAMES]) == 0
    printed = capsys.readouterr().out
    with open(out / "stats.json") as f:
        stats = json.load(f)
    per_class, sizes, _ = annotation_counts(os.path.join(folder, "annotations", "instances_train.json"))
    assert stats["dataset"]["per_class"] == per_class
    assert stats["dataset"]["sizes"] == sizes
    assert stats["dataset"]["images"] == 6
    assert f"| **all** | {sum(per_class.values())} | {stats['samples']['boxes']} |" in printed
    assert sum(stats["samples"]["sizes"].values()) == stats["samples"]["boxes"] == sum(i["boxes"] for i in stats["images"])
    assert len(stats["images"]) == 4
    for image in stats["images"]:  # shortest side one of min_sizes, unless max_size (256) bounds it
        short, long = sorted((image["height"], image["width"]))
        assert short in (128, 144, 160, 176, 192) or long == 256
    assert sorted(os.listdir(out)) == sorted(
        ["contact_sheet.png", "stats.json"] + [os.path.basename(i["path"]) for i in stats["images"]])
    for name in os.listdir(out):
        if name.endswith(".png"):
            with open(out / name, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["raw", "test"])
def test_raw_and_test_split_keep_every_box(folder, tmp_path, mode):
    out = tmp_path / mode
    extra = ["--raw", "--palette", "--columns", "3", "--cell-size", "100"] if mode == "raw" else ["--split", "test"]
    assert run(["--config-file", CONFIG, "--num", "3", "--out", str(out), *extra, *NAMES]) == 0
    sheet = Image.open(out / "contact_sheet.png")
    if mode == "raw":  # 3 columns of 100 px, 256-colour palette
        assert sheet.mode == "P" and sheet.size[0] == 300
    else:
        assert sheet.mode == "RGBA" and sheet.size[0] == 2 * 300  # ceil(sqrt(3)) columns of 300 px
    with open(out / "stats.json") as f:
        stats = json.load(f)
    split = "train" if mode == "raw" else "val"
    _, _, per_image = annotation_counts(os.path.join(folder, "annotations", f"instances_{split}.json"))
    for image in stats["images"]:
        assert image["boxes"] == per_image.get(image["image_id"], 0)
        if mode == "test":  # test resize: shortest side 160 unless the longer one hits 256
            short, long = sorted((image["height"], image["width"]))
            assert short == 160 or long == 256


def test_clear_errors(folder, tmp_path, capsys):
    cases = [
        (["--config-file", str(tmp_path / "missing.py")], "config file not found"),
        (["--config-file", CONFIG, "dataloader.train.dataset.names=no_such_set"], "unknown dataset 'no_such_set'"),
        (["--config-file", CONFIG, "dataloader.train.datset.names=x"], "did you mean 'dataloader.train.dataset'"),
    ]
    for argv, message in cases:
        assert run(argv[:2] + ["--out", str(tmp_path / "o")] + argv[2:]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_help_and_deprecated_opts(folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        browse_dataset.get_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    # the description is whole sentences, not the docstring's first line cut mid-sentence
    assert "as the model gets them (after the config's augmentation) or as stored (--raw)." in text
    argv = ["--config-file", CONFIG, "--out", str(tmp_path / "o"), "--opts", "dataloader.train.dataset.names=no_such_set"]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--opts is deprecated" in err[0] and "unknown dataset 'no_such_set'" in err[1] and len(err) == 2
