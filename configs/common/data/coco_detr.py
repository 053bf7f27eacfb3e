"""COCO 2017 detection data with the DETR / Deformable DETR augmentation.

Images and annotations are read from ``$DETECTRON2_DATASETS/coco`` (default ``./datasets/coco``):
``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``.
"""
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from detrex_lite.data import (
    DetrDatasetMapper,
    ResumableTrainLoader,
    build_coco_evaluator,
    detr_crop_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)

dataloader = OmegaConf.create()

# detectron2's build_detection_train_loader with a position that the checkpoint keeps: a resumed
# run sees the images, augmentation and batches of the uninterrupted run (shuffled each epoch,
# seeded by train.seed; see detrex_lite/data/train_loader.py).
dataloader.train = L(ResumableTrainLoader)(
    # DETR trains on every image, those without annotations included (the "no object" class
    # learns from them); images with only crowd boxes become images without boxes.
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=L(detr_train_augmentation)(
            min_sizes=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
            max_size=1333,
        ),
        augmentation_with_crop=L(detr_crop_augmentation)(
            min_sizes="${..augmentation.min_sizes}",
            max_size="${..augmentation.max_size}",
            crop_pre_resize_sizes=[400, 500, 600],
            crop_size=[384, 600],
        ),
        is_train=True,
        img_format="RGB",
        crop_prob=0.5,
        skip_unreadable=False,  # True: log and skip unreadable images instead of stopping
    ),
    total_batch_size=16,
    # Landscape (w > h) and other images in separate batches (less padding), as detectron2's.
    aspect_ratio_grouping=True,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=L(detr_test_augmentation)(min_size=800, max_size=1333),
        augmentation_with_crop=None,
        is_train=False,
        img_format="RGB",
    ),
    num_workers=4,
)

dataloader.evaluator = L(build_coco_evaluator)(dataset_name="${..test.dataset.names}")
