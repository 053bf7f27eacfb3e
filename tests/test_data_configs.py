"""configs/common/data/*.py load, save, and build working loaders, mappers and evaluators."""
import os

import detectron2.data.transforms as T
import pytest
import torch
from detectron2.config import instantiate
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from detrex_lite.config import get_config
from detrex_lite.data import DetrDatasetMapper, build_coco_evaluator, demo_dataset

from config_roundtrip import save_and_reload

DATA_CONFIGS = ["common/data/coco_detr.py", "common/data/demo_detr.py"]


@pytest.mark.parametrize("path", DATA_CONFIGS)
def test_config_saves_and_reloads(path, tmp_path):
    cfg = get_config(path)
    reloaded = save_and_reload(cfg, tmp_path)
    assert reloaded.dataloader.evaluator.dataset_name == cfg.dataloader.test.dataset.names
    for split in ("train", "test"):
        mapper = instantiate(reloaded.dataloader[split].mapper)
        assert isinstance(mapper, DetrDatasetMapper) and mapper.is_train == (split == "train")


def test_coco_config_values():
    dataloader = get_config("common/data/coco_detr.py").dataloader
    assert dataloader.train.dataset.names == "coco_2017_train"
    assert dataloader.train.dataset.filter_empty is False
    assert dataloader.evaluator.dataset_name == "coco_2017_val"
    mapper = instantiate(dataloader.train.mapper)
    assert isinstance(mapper, DetrDatasetMapper) and mapper.is_train and mapper.img_format == "RGB"
    resize = mapper.augmentation.augs[-1]
    assert isinstance(resize, T.ResizeShortestEdge)
    assert list(resize.short_edge_length) == list(range(480, 801, 32)) and resize.max_size == 1333
    crop_augs = mapper.augmentation_with_crop.augs
    assert [type(a) for a in crop_augs] == [T.RandomFlip, T.ResizeShortestEdge, T.RandomCrop,
                                            T.ResizeShortestEdge]
    assert list(crop_augs[1].short_edge_length) == [400, 500, 600]
    assert (crop_augs[2].crop_type, tuple(crop_augs[2].crop_size)) == ("absolute_range", (384, 600))
    test_mapper = instantiate(dataloader.test.mapper)
    assert not test_mapper.is_train and test_mapper.augmentation_with_crop is None
    assert test_mapper.augmentation.augs[0].short_edge_length == (800, 800)


def test_missing_coco_annotations_are_named(tmp_path, monkeypatch):
    from detectron2.data import MetadataCatalog

    json_file = MetadataCatalog.get("coco_2017_val").json_file
    if os.path.isfile(json_file):
        pytest.skip("COCO is installed here")
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        build_coco_evaluator("coco_2017_val")


def test_demo_config_builds_loaders_and_evaluator(tmp_path):
    root = str(tmp_path)
    demo_dataset.register_demo_datasets(root, num_train=8, num_val=4)
    try:
        dataloader = get_config("common/data/demo_detr.py").dataloader
        batch = next(iter(instantiate(dataloader.train)))
        assert len(batch) == dataloader.train.total_batch_size
        for item in batch:
            image = item["image"]
            assert image.dtype == torch.uint8 and image.shape[0] == 3
            assert max(image.shape[1:]) <= 256
            boxes = item["instances"].gt_boxes.tensor
            assert (boxes[:, 2:] > boxes[:, :2]).all()
            assert (boxes[:, 0::2] <= image.shape[2]).all() and (boxes[:, 1::2] <= image.shape[1]).all()
        test_items = [batch[0] for batch in instantiate(dataloader.test)]
        assert len(test_items) == 4
        assert all(min(item["image"].shape[1:]) == 160 for item in test_items)
        assert isinstance(instantiate(dataloader.evaluator), COCOEvaluator)
        assert sorted(os.listdir(root)) == ["demo_v1-8-4", "demo_v1-8-4.lock"]
    finally:
        demo_dataset.register_demo_datasets()
