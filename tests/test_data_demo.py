"""The synthetic demo dataset: determinism, content, atomic/concurrent generation, registration."""
import hashlib
import json
import multiprocessing
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

import detrex_lite.data  # noqa: F401  (registers the demo datasets)
from detrex_lite.config import num_classes_from_dataset
from detrex_lite.data import build_coco_evaluator, demo, demo_dataset


def _hashes(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """A 60 / 12 image demo dataset, generated once for this module."""
    out = str(tmp_path_factory.mktemp("demo") / "demo_v1")
    demo_dataset._atomic_generate(out, num_train=60, num_val=12)
    return out


@pytest.fixture
def demo_registered_at(small_demo):
    """Register the demo names on the small dataset; restore the default registration after."""
    demo_dataset.register_demo_datasets(os.path.dirname(small_demo))
    yield small_demo
    demo_dataset.register_demo_datasets()


def test_generation_is_deterministic(tmp_path):
    first = demo_dataset.generate_demo_dataset(str(tmp_path / "a"), num_train=5, num_val=3)
    second = demo_dataset.generate_demo_dataset(str(tmp_path / "b"), num_train=5, num_val=3)
    first_hashes, second_hashes = _hashes(first), _hashes(second)
    assert len(first_hashes) == 5 + 3 + 2 + 1  # images, two jsons, manifest
    assert first_hashes == second_hashes
    other_seed = demo_dataset.generate_demo_dataset(str(tmp_path / "c"), num_train=5, num_val=3, seed=7)
    assert _hashes(other_seed)["train/000001.jpg"] != first_hashes["train/000001.jpg"]


def test_content_classes_sizes_and_boxes(small_demo):
    with open(os.path.join(small_demo, "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    assert [c["name"] for c in coco["categories"]] == list(demo_dataset.DEMO_CLASSES)
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5, 6]
    assert len(coco["images"]) == 60
    images = {im["id"]: im for im in coco["images"]}
    for image in coco["images"]:
        with Image.open(os.path.join(small_demo, "train", image["file_name"])) as im:
            assert im.size == (image["width"], image["height"])
            assert im.mode == "RGB"
        assert 128 <= image["height"] <= 192 and 128 <= image["width"] <= 192
    classes = {a["category_id"] for a in coco["annotations"]}
    assert classes == {1, 2, 3, 4, 5, 6}
    longest = np.array([max(a["bbox"][2:]) for a in coco["annotations"]])
    assert longest.min() <= 12 and (longest <= 16).sum() >= 10, "small objects are missing"
    assert longest.max() >= 50, "large objects are missing"
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=61)[1:]
    assert per_image.max() <= demo_dataset.MAX_OBJECTS and per_image.mean() > 2
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        image = images[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_objects_are_visible_in_pixels(small_demo):
    """An object's box differs from the background ring around it (the boxes match the pixels)."""
    with open(os.path.join(small_demo, "annotations", "instances_val.json")) as f:
        coco = json.load(f)
    images = {im["id"]: im for im in coco["images"]}
    contrasts = []
    for a in coco["annotations"]:
        image = np.asarray(
            Image.open(os.path.join(small_demo, "val", images[a["image_id"]]["file_name"])), np.float32
        )
        x, y, w, h = a["bbox"]
        inside = image[y:y + h, x:x + w].reshape(-1, 3).mean(0)
        ring = image[max(y - 3, 0):y + h + 3, max(x - 3, 0):x + w + 3].copy()
        ring[min(y, 3):min(y, 3) + h, min(x, 3):min(x, 3) + w] = np.nan
        outside = np.nanmean(ring.reshape(-1, 3), 0)
        contrasts.append(np.abs(inside - outside).max())
    assert np.median(contrasts) > 15


def test_killed_generation_leaves_nothing(tmp_path, monkeypatch):
    target = str(tmp_path / "demo_v1")

    def fail_halfway(out_dir, **kwargs):
        os.makedirs(os.path.join(out_dir, "train"))
        open(os.path.join(out_dir, "train", "000001.jpg"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_dataset, "generate_demo_dataset", fail_halfway)
    with pytest.raises(KeyboardInterrupt):
        demo_dataset._atomic_generate(target)
    assert sorted(os.listdir(tmp_path)) == ["demo_v1.lock"]
    monkeypatch.undo()
    demo_dataset._atomic_generate(target, num_train=2, num_val=1)
    assert demo_dataset._is_complete(target)
    assert sorted(os.listdir(target)) == ["annotations", "manifest.json", "train", "val"]


def _generate_in_child(target, counter):
    original = demo_dataset.generate_demo_dataset

    def counting(out_dir, **kwargs):
        with open(counter, "a") as f:
            f.write("generated\n")
        return original(out_dir, **kwargs)

    demo_dataset.generate_demo_dataset = counting
    demo_dataset._atomic_generate(target, num_train=4, num_val=2)


def test_concurrent_processes_generate_once(tmp_path):
    target, counter = str(tmp_path / "demo_v1"), str(tmp_path / "count.txt")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_generate_in_child, args=(target, counter)) for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    with open(counter) as f:
        assert f.read().splitlines() == ["generated"]
    assert demo_dataset._is_complete(target)
    assert len(os.listdir(os.path.join(target, "train"))) == 4


def test_command_line(tmp_path):
    out = str(tmp_path / "cli")
    demo.main(["--out", out, "--num-train", "3", "--num-val", "2"])
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f)["num_images"] == {"train": 3, "val": 2}
    assert _hashes(out) == _hashes(demo_dataset.generate_demo_dataset(str(tmp_path / "ref"), 3, 2))


def test_registration_is_cheap_and_has_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("DETREX_LITE_CACHE", str(tmp_path))
    demo_dataset.register_demo_datasets()
    try:
        assert os.listdir(tmp_path) == []  # nothing generated at registration
        for name, split in demo_dataset.DEMO_DATASET_NAMES.items():
            assert name in DatasetCatalog.list()
            meta = MetadataCatalog.get(name)
            assert meta.thing_classes == list(demo_dataset.DEMO_CLASSES)
            assert meta.evaluator_type == "coco"
            assert meta.json_file == str(tmp_path / "demo_v1" / "annotations" / f"instances_{split}.json")
            assert meta.image_root == str(tmp_path / "demo_v1" / split)
        assert num_classes_from_dataset(["detrex_demo_train", "detrex_demo_val"]) == 6
        assert os.listdir(tmp_path) == []
    finally:
        monkeypatch.delenv("DETREX_LITE_CACHE")
        demo_dataset.register_demo_datasets()


def test_loading_registered_dataset(demo_registered_at):
    dicts = DatasetCatalog.get("detrex_demo_val")
    assert len(dicts) == 12
    with open(os.path.join(demo_registered_at, "annotations", "instances_val.json")) as f:
        coco = json.load(f)
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])
    first = coco["annotations"][0]
    record = next(d for d in dicts if d["image_id"] == first["image_id"])
    assert os.path.isfile(record["file_name"])
    assert record["annotations"][0]["bbox"] == first["bbox"]
    assert record["annotations"][0]["category_id"] == first["category_id"] - 1


def test_evaluator_scores_ground_truth_as_perfect(demo_registered_at):
    """Ground-truth boxes fed as predictions through COCOEvaluator give AP = 100."""
    evaluator = build_coco_evaluator("detrex_demo_val")
    evaluator.reset()
    for record in DatasetCatalog.get("detrex_demo_val"):
        instances = Instances((record["height"], record["width"]))
        xywh = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.scores = torch.ones(len(xywh))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]],
                                              dtype=torch.int64)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP-circle"] == pytest.approx(100.0)
