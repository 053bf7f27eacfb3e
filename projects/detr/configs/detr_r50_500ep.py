# DETR, ResNet-50, 500 epochs (paper Table 1, "DETR": 42.0 AP).
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset

from .models.detr_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_500ep
train = get_config("common/train.py").train

# The class count comes from the training set's metadata (80 for COCO).
model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

# Official recipe: AdamW lr 1e-4, backbone 1e-5 (no other lr groups), weight decay 1e-4,
# gradient clipping at max-norm 0.1 (common/train.py), total batch 64 (16 GPUs x 4), 500 epochs
# with lr x0.1 at epoch 400.
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_multipliers = {"backbone": 0.1}
dataloader.train.total_batch_size = 64
train.max_iter = get_config("common/coco_schedule.py").max_iter.ep500
train.output_dir = "./output/detr_r50_500ep"
