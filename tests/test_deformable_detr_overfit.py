"""A tiny Deformable DETR memorises a handful of drawn images: AP50 on them must be high.

This checks the whole chain (targets, matcher, criterion, refinement, post-processing) learns:
a sign error or a wrong box convention anywhere leaves AP near zero.
"""
import contextlib
import io
import time

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrex_lite.layers import PositionEmbeddingSine
from detrex_lite.modeling import ChannelMapper, HungarianMatcher, SetCriterion, build_resnet
from projects.deformable_detr.modeling import DeformableDETR, DeformableTransformer

COLORS = {0: (230, 40, 40), 1: (40, 200, 60)}  # class 0: red squares, class 1: green discs


def draw_images(num_images=4, size=64, seed=0):
    """Gray images with 1-3 non-overlapping objects; returns model inputs (train) and COCO gt."""
    rng = np.random.default_rng(seed)
    inputs, images, annotations = [], [], []
    for image_id in range(1, num_images + 1):
        img = np.full((size, size, 3), 110, dtype=np.uint8)
        boxes, classes = [], []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                side = int(rng.integers(18, 40))
                x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
                box = [x0, y0, x0 + side, y0 + side]
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    break
            else:
                continue
            cls = int(rng.integers(0, 2))
            if cls == 0:
                img[y0 : y0 + side, x0 : x0 + side] = COLORS[0]
            else:
                yy, xx = np.mgrid[:size, :size]
                r = side / 2
                img[(yy + 0.5 - y0 - r) ** 2 + (xx + 0.5 - x0 - r) ** 2 <= r * r] = COLORS[1]
            boxes.append(box)
            classes.append(cls)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        inputs.append({"image": image, "height": size, "width": size, "image_id": image_id, "instances": inst})
        images.append({"id": image_id, "height": size, "width": size, "file_name": f"{image_id}.png"})
        for b, c in zip(boxes, classes):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1, "iscrowd": 0,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float((b[2] - b[0]) * (b[3] - b[1])),
            })
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]}
    return inputs, gt


def coco_ap(gt_dict, predictions):
    """(AP, AP50) of [(image_id, Instances)] with pycocotools."""
    results = []
    for image_id, inst in predictions:
        for box, score, cls in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
            results.append({"image_id": image_id, "category_id": cls + 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[0], evaluator.stats[1]


def tiny_detector():
    torch.manual_seed(0)
    d = 32
    # Stem and res2 frozen as in the real configs (and it halves the backward time).
    backbone = build_resnet(depth=18, stem_out_channels=8, freeze_at=2, norm="FrozenBN", out_features=["res3", "res4", "res5"])
    neck = ChannelMapper(backbone.output_shape(), in_features=["res3", "res4", "res5"], out_channels=d, num_outs=3, num_groups=8)
    transformer = DeformableTransformer(
        d_model=d, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
        num_feature_levels=3, enc_n_points=2, dec_n_points=2,
    )
    criterion = SetCriterion(2, HungarianMatcher(2.0, 5.0, 2.0))
    return DeformableDETR(
        backbone=backbone, neck=neck, position_embedding=PositionEmbeddingSine(d), transformer=transformer,
        num_classes=2, criterion=criterion, num_queries=10, with_box_refine=True, select_box_nums_for_evaluation=10,
    )


@pytest.mark.slow
def test_overfits_a_few_images():
    inputs, gt = draw_images()
    model = tiny_detector()
    # A high learning rate: memorising four images takes ~60 steps (AP50 = 1.0 from step 50 to
    # 300 in a longer run); 120 steps leave a margin.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-4)
    model.train()
    start = time.time()
    for _ in range(120):
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in x.items() if k != "instances"} for x in inputs])
    ap, ap50 = coco_ap(gt, [(x["image_id"], o["instances"]) for x, o in zip(inputs, outputs)])
    print(f"overfit: AP={ap:.3f} AP50={ap50:.3f} in {time.time() - start:.0f}s")
    assert ap50 > 0.8
    assert ap > 0.5
