"""Data for the tests of the analysis tools: a small demo dataset registered under its own names,
and COCO results made from its ground truth with known errors.

``perturbed_predictions`` turns each ground-truth box into one of: a close detection (IoU > 0.75),
a loose one (0.5 < IoU < 0.75), a badly localised one (0.1 < IoU < 0.5), a detection of the
wrong class, a duplicate pair, or nothing (missed); and adds one background box per image. The
tests then compare what the tools write with independent COCOeval runs on the same file.
"""
import json
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog

from detrex_lite.data import generate_demo_dataset, register_coco_dataset

TRAIN, VAL = "tools_test_demo_train", "tools_test_demo_val"


def register_small_demo(root: str, num_train: int = 6, num_val: int = 12) -> str:
    """Generates a small demo dataset under root (once) and registers it as TRAIN / VAL;
    returns the dataset folder."""
    folder = os.path.join(root, f"demo-{num_train}-{num_val}")
    if not os.path.isfile(os.path.join(folder, "annotations", "instances_val.json")):
        generate_demo_dataset(folder, num_train=num_train, num_val=num_val)
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_dataset(name, os.path.join(folder, "annotations", f"instances_{split}.json"),
                              os.path.join(folder, split))
    return folder


def _shift(box, fx, fy):
    x, y, w, h = box
    return [x + fx * w, y + fy * h, w, h]


def perturbed_predictions(gt_json: str) -> List[dict]:
    """COCO results with every kind of error, deterministic (see the module docstring)."""
    with open(gt_json) as f:
        gt = json.load(f)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    results = []
    for i, ann in enumerate(sorted(gt["annotations"], key=lambda a: a["id"])):
        box, cat, image = ann["bbox"], ann["category_id"], ann["image_id"]
        score = 0.5 + 0.45 * ((i * 37) % 100) / 100.0  # interleaved scores in [0.5, 0.95)
        kind = i % 8
        if kind in (0, 1, 2):  # close: IoU 0.9 / 1.1 ~ 0.82
            results.append(dict(image_id=image, category_id=cat, bbox=_shift(box, 0.05, 0.0), score=score))
        elif kind == 3:  # loose: shifted by 0.25 w, IoU 0.6
            results.append(dict(image_id=image, category_id=cat, bbox=_shift(box, 0.25, 0.0), score=score))
        elif kind == 4:  # localisation error: shifted by 0.6 w and 0.3 h, IoU ~ 0.2
            results.append(dict(image_id=image, category_id=cat, bbox=_shift(box, 0.6, 0.3), score=score))
        elif kind == 5:  # right box, wrong class
            other = cat_ids[(cat_ids.index(cat) + 1) % len(cat_ids)]
            results.append(dict(image_id=image, category_id=other, bbox=list(box), score=score))
        elif kind == 6:  # duplicate pair
            results.append(dict(image_id=image, category_id=cat, bbox=list(box), score=score))
            results.append(dict(image_id=image, category_id=cat, bbox=_shift(box, 0.02, 0.02), score=score - 0.3))
        # kind 7: missed
    for image in gt["images"]:  # one background box per image, in the top-left corner
        results.append(dict(image_id=image["id"], category_id=cat_ids[image["id"] % len(cat_ids)],
                            bbox=[0.0, 0.0, 6.0, 6.0], score=0.55 + 0.01 * (image["id"] % 10)))
    return results


def write_predictions(results: List[dict], path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)
    return path
