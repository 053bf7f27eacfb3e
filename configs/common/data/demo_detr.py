"""The synthetic demo dataset (detrex_lite.data.demo) with DETR augmentation scaled to its
128-192 px images, small enough for training runs on a CPU: the COCO data config
(common/data/coco_detr.py) with the demo's datasets, sizes, batch and workers."""
from detrex_lite.config import get_config

dataloader = get_config("common/data/coco_detr.py").dataloader

dataloader.train.dataset.names = "detrex_demo_train"
# COCO's 480..800 / 1333 scaled by 0.24 to the demo's image size (the crop branch follows
# min_sizes / max_size by interpolation).
dataloader.train.mapper.augmentation.min_sizes = [128, 144, 160, 176, 192]
dataloader.train.mapper.augmentation.max_size = 256
dataloader.train.mapper.augmentation_with_crop.crop_pre_resize_sizes = [112, 128, 144]
dataloader.train.mapper.augmentation_with_crop.crop_size = [96, 144]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0

dataloader.test.dataset.names = "detrex_demo_val"
dataloader.test.mapper.augmentation.min_size = 160
dataloader.test.mapper.augmentation.max_size = 256
dataloader.test.num_workers = 0
