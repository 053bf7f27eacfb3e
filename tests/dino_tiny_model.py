"""Tiny DINO for the DINO tests: the shipped R50 model config shrunk (ResNet-18 at 1/8 width,
d_model 32, 2 + 2 layers, 12 queries), every code path kept (CDN, mixed query selection, look
forward twice, multi-scale deformable attention)."""
import os

import torch
from detectron2.config import LazyConfig
from detectron2.structures import Boxes, Instances

from detrex_lite.config import shrink_model
from tests.tools_tiny_models import _tiny_data_and_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DINO_MODEL = os.path.join(REPO, "projects/dino/configs/models/dino_r50.py")


def tiny_dino_config(num_classes: int = 6, num_queries: int = 12, num_layers: int = 2, dn_number: int = 6, **switches):
    """A full LazyConfig (model + demo data + optimizer + train) of a tiny DINO; ``switches``
    set model fields (``mixed_selection=False``, ``look_forward_twice=False``, ``share_heads``)."""
    cfg = LazyConfig.load(DINO_MODEL)
    shrink_model(
        cfg.model, depth=18, stem_out_channels=8, freeze_at=0, num_groups=4, d_model=32, nhead=2,
        dim_feedforward=64, num_layers=num_layers, dropout=0.0, num_points=2, num_queries=num_queries,
        select_box_nums_for_evaluation=10,
    )
    cfg.model.num_classes = num_classes
    cfg.model.dn_number = dn_number
    for key, value in switches.items():
        cfg.model[key] = value
    _tiny_data_and_train(cfg)  # the demo data at 64-96 px, the shared optimizer and train settings
    return cfg


def random_inputs(sizes_and_counts, num_classes: int = 6, seed: int = 0):
    """detectron2 training inputs: per (h, w, n) a random uint8 image with n random boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w, n in sizes_and_counts:
        inst = Instances((h, w))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 6 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        out.append({"image": image, "instances": inst, "height": h, "width": w})
    return out
