# The toy detector (toy_detector_demo.py) on a fixed batch: the same 4 demo images every
# iteration, no random augmentation, a constant lr. The loss of an iteration then depends only
# on the weights and the optimizer state, so a resumed run must reproduce an uninterrupted one
# loss for loss (tests/test_train_net_interrupt.py).
import os

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from detrex_lite.data import first_dataset_dicts

_base = LazyConfig.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_detector_demo.py"))
model, optimizer, lr_multiplier, train, dataloader = (
    _base.model, _base.optimizer, _base.lr_multiplier, _base.train, _base.dataloader
)

dataloader.train.dataset = L(first_dataset_dicts)(names="detrex_demo_train", num_images=4)
dataloader.train.total_batch_size = 4
dataloader.train.aspect_ratio_grouping = False
dataloader.train.mapper.augmentation.random_flip = "none"
dataloader.train.mapper.augmentation.min_sizes = [96]
dataloader.train.mapper.augmentation_with_crop = None
lr_multiplier.scheduler.values = [1.0, 1.0]
optimizer.lr = 1e-2
train.max_iter = 1000
train.checkpointer = dict(period=1000, max_to_keep=3)
train.eval_period = 0
# No evaluation: the interruption tests compare training only.
dataloader.pop("evaluator")
