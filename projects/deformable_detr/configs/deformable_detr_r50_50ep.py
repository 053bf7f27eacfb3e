# Deformable DETR, ResNet-50, multi-scale, 50 epochs (paper Table 1: 43.8 AP; official repo: 44.5).
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset

from .models.deformable_detr_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

# The class count comes from the training set's metadata (80 for COCO).
model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

# Official recipe: total batch 32 (e.g. 8 GPUs x 4), 50 epochs, lr x0.1 at epoch 40.
dataloader.train.total_batch_size = 32
train.max_iter = get_config("common/coco_schedule.py").max_iter.ep50
train.output_dir = "./output/deformable_detr_r50_50ep"
