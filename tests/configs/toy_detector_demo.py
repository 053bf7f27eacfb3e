# The engine tests' config: a toy detector (tests/engine_toy_detector.py) on the demo dataset,
# composed from the shared common/ configs exactly as a model config is.
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset
from detrex_lite.data import first_dataset_dicts
from detrex_lite.solver import default_detr_schedule
from tests.engine_toy_detector import ToyDetector

dataloader = get_config("common/data/demo_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

model = L(ToyDetector)(
    num_classes=L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}"),
    num_queries=6,
    channels=8,
)

# 10 "epochs" of 8 images at batch 4 = 20 iterations, lr x0.1 after 16.
lr_multiplier = default_detr_schedule(epochs=10, decay_epochs=8, total_batch_size=4, num_images=8)
optimizer.lr = 1e-3
dataloader.train.total_batch_size = 4
dataloader.train.mapper.augmentation.min_sizes = [96, 112]
dataloader.train.mapper.augmentation.max_size = 144
dataloader.test.mapper.augmentation.min_size = 96
dataloader.test.mapper.augmentation.max_size = 144

train.max_iter = 20
train.device = "cpu"
train.seed = 0
train.log_period = 1
train.eval_period = 0
train.checkpointer = dict(period=5, max_to_keep=100)
train.dist_timeout = 120
train.output_dir = "./output/test_toy_detector"

# Evaluate on the first 16 validation images only (the test runs several evaluations).
dataloader.test.dataset = L(first_dataset_dicts)(names="detrex_demo_val", num_images=16)
