"""A tiny DETR memorises four images of the synthetic demo dataset: COCO AP on them must be high.

This checks that the whole DETR chain learns (targets, Hungarian matching with the softmax
class cost, the no-object-weighted cross-entropy, box losses, the official post-processing and
the box conversion back to the original image size): a sign error or a wrong box convention
anywhere leaves AP near zero. The AP comes from pycocotools on the generated COCO json.
"""
import contextlib
import copy
import io
import json
import os
import time

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrex_lite.data import DetrDatasetMapper, detr_test_augmentation, generate_demo_dataset, load_coco_detection_json
from detrex_lite.data.demo import DEMO_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG = os.path.join(REPO, "projects/detr/configs/models/detr_r50.py")
NUM_IMAGES = 4
ITERS, LR_DROP_AT = 400, 300


def tiny_detr():
    """The shipped model config at toy size: ResNet-18 (1/8 width, no BN statistics to drift
    between training and evaluation), stride-16 features, d=64, 1 + 2 layers, 20 queries."""
    cfg = LazyConfig.load(MODEL_CONFIG).model
    cfg.backbone.update(depth=18, stem_out_channels=8, freeze_at=0, norm="FrozenBN", out_features=["res4"])
    cfg.in_feature = "res4"
    cfg.transformer.update(d_model=64, nhead=4, dim_feedforward=128, num_encoder_layers=1, num_decoder_layers=2, dropout=0.0)
    cfg.num_classes = len(DEMO_CLASSES)
    cfg.num_queries = 20
    cfg.select_box_nums_for_evaluation = 20
    # Evaluate the same padded batch the model trained on (per-image inference would see other
    # border features, which matters for a model that memorises four images).
    cfg.batch_invariant_inference = False
    torch.manual_seed(0)
    return instantiate(cfg)


def coco_ap(json_file, inputs, outputs):
    """(AP, AP50) of the model outputs against the COCO json, with pycocotools."""
    with open(json_file) as f:
        category_ids = sorted(c["id"] for c in json.load(f)["categories"])
    results = []
    for x, out in zip(inputs, outputs):
        inst = out["instances"]
        for box, score, cls in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
            results.append({"image_id": x["image_id"], "category_id": category_ids[cls], "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1]


@pytest.fixture
def one_thread():
    # Deterministic reductions and no thread oversubscription on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_overfits_four_demo_images(tmp_path, one_thread):
    root = generate_demo_dataset(str(tmp_path / "demo"), num_train=NUM_IMAGES, num_val=0)
    json_file = os.path.join(root, "annotations", "instances_train.json")
    records = load_coco_detection_json(json_file, os.path.join(root, "train"))
    resize = detr_test_augmentation(min_size=128, max_size=256)
    train_mapper = DetrDatasetMapper(resize, None, is_train=True, crop_prob=0.0)
    test_mapper = DetrDatasetMapper(resize, None, is_train=False)
    train_inputs = [train_mapper(copy.deepcopy(r)) for r in records]
    test_inputs = [test_mapper(copy.deepcopy(r)) for r in records]
    assert sum(len(x["instances"]) for x in train_inputs) >= NUM_IMAGES  # something to detect

    model = tiny_detr()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()
    start = time.time()
    for it in range(ITERS):
        if it == LR_DROP_AT:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        losses = model(train_inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model(test_inputs)
    for x, out in zip(test_inputs, outputs):
        assert out["instances"].image_size == (x["height"], x["width"])
    ap, ap50 = coco_ap(json_file, test_inputs, outputs)
    print(f"DETR overfit: AP={ap:.3f} AP50={ap50:.3f} in {time.time() - start:.0f}s")
    assert ap50 > 0.9
    assert ap > 0.7
