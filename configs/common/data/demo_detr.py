"""The synthetic demo dataset (detrex_lite.data.demo) with DETR augmentation scaled to its
128-192 px images, small enough for training runs on a CPU."""
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from detrex_lite.data import (
    DetrDatasetMapper,
    build_coco_evaluator,
    detr_crop_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="detrex_demo_train", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        # COCO's 480..800 / 1333 scaled by 0.24 to the demo's image size.
        augmentation=L(detr_train_augmentation)(min_sizes=[128, 144, 160, 176, 192], max_size=256),
        augmentation_with_crop=L(detr_crop_augmentation)(
            min_sizes="${..augmentation.min_sizes}",
            max_size="${..augmentation.max_size}",
            crop_pre_resize_sizes=[112, 128, 144],
            crop_size=[96, 144],
        ),
        is_train=True,
        img_format="RGB",
        crop_prob=0.5,
        skip_unreadable=False,
    ),
    total_batch_size=4,
    num_workers=0,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="detrex_demo_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=L(detr_test_augmentation)(min_size=160, max_size=256),
        augmentation_with_crop=None,
        is_train=False,
        img_format="RGB",
    ),
    num_workers=0,
)

dataloader.evaluator = L(build_coco_evaluator)(dataset_name="${..test.dataset.names}")
