# The shipped Deformable DETR R50 50-epoch config, shrunk for a CPU test (ResNet-18 at 1/8 width,
# d_model 32, one encoder + one decoder layer, 20 queries) and moved to the demo dataset. The class
# count still comes from the dataset through num_classes_from_dataset.
import os

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from detrex_lite.config import get_config, shrink_model
from detrex_lite.data import first_dataset_dicts
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_base = LazyConfig.load(os.path.join(_REPO, "projects/deformable_detr/configs/deformable_detr_r50_50ep.py"))

model = _base.model
optimizer = _base.optimizer
train = _base.train
dataloader = get_config("common/data/demo_detr.py").dataloader

# ResNet-18 widths res3/res4/res5 = 16/32/64.
shrink_model(
    model, depth=18, stem_out_channels=8, freeze_at=0, num_groups=4,
    d_model=32, nhead=2, dim_feedforward=64, num_layers=1, num_points=2, num_queries=20,
)

dataloader.train.total_batch_size = 2
dataloader.train.mapper.augmentation.min_sizes = [64, 80]
dataloader.train.mapper.augmentation.max_size = 96
dataloader.train.mapper.augmentation_with_crop.crop_pre_resize_sizes = [64, 80]
dataloader.train.mapper.augmentation_with_crop.crop_size = [48, 64]
dataloader.test.mapper.augmentation.min_size = 64
dataloader.test.mapper.augmentation.max_size = 96

# 2 "epochs" of 4 images at batch 2, lr x0.1 after the first.
lr_multiplier = default_detr_schedule(epochs=2, decay_epochs=1, total_batch_size=2, num_images=4)
train.max_iter = epochs_to_iters(2, total_batch_size=2, num_images=4)
train.device = "cpu"
train.seed = 0
train.log_period = 1
train.eval_period = 0
train.checkpointer = dict(period=2, max_to_keep=10)
train.output_dir = "./output/test_deformable_detr_tiny"

# Evaluate on the first 8 validation images only (the test runs several evaluations).
dataloader.test.dataset = L(first_dataset_dicts)(names="detrex_demo_val", num_images=8)
