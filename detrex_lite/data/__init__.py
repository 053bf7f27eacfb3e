"""Datasets, augmentation and the dataset mapper.

Importing this package registers the synthetic demo datasets "detrex_demo_train" and
"detrex_demo_val" (cheap: the images are generated on first load). COCO 2017 is registered by
detectron2 itself ("coco_2017_train", "coco_2017_val", under ``$DETECTRON2_DATASETS``).
"""
from .classes import ClassInfo
from .coco import DatasetError, accepted_ground_truth, load_coco_detection_json, read_coco_json, register_coco_dataset
from .dataset_mapper import DetrDatasetMapper, ImageReadError, non_crowd_boxes, read_image, read_image_file
from .demo_dataset import (
    DEMO_CLASSES,
    DEMO_DATASET_NAMES,
    ensure_demo_dataset,
    generate_demo_dataset,
    register_demo_datasets,
)
from .evaluation import build_coco_evaluator
from .registration import (
    config_dataset_names,
    read_dataset_records,
    register_json_dataset,
    register_recorded_datasets,
    unknown_dataset_message,
    write_dataset_records,
)
from .subset import first_dataset_dicts
from .train_loader import ALL_SKIPPED_MESSAGE, ResumableTrainLoader
from .transforms import detr_crop_augmentation, detr_test_augmentation, detr_train_augmentation

register_demo_datasets()
