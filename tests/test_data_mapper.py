"""DetrDatasetMapper output contract and the DETR augmentation size ranges."""
import detectron2.data.transforms as T
import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from PIL import Image

from detrex_lite.data import (
    DetrDatasetMapper,
    detr_crop_augmentation,
    detr_test_augmentation,
    detr_train_augmentation,
)


@pytest.fixture
def red_left_image(tmp_path):
    """A 60 x 80 PNG: left half pure red, right half pure blue."""
    array = np.zeros((60, 80, 3), np.uint8)
    array[:, :40, 0] = 255
    array[:, 40:, 2] = 255
    path = str(tmp_path / "image.png")
    Image.fromarray(array).save(path)
    return path


def _record(file_name, annotations):
    return {"file_name": file_name, "height": 60, "width": 80, "image_id": 7,
            "annotations": annotations}


def _ann(bbox, category_id, iscrowd=0, mode=BoxMode.XYWH_ABS):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, "iscrowd": iscrowd}


def test_train_output_contract_rgb_and_box_transform(red_left_image):
    # Resize 60x80 -> 30x40 (exactly half) then a horizontal flip: boxes follow exactly.
    mapper = DetrDatasetMapper(
        augmentation=[T.ResizeShortestEdge(30, max_size=1000), T.RandomFlip(prob=1.0)],
        augmentation_with_crop=None,
    )
    record = _record(red_left_image, [
        _ann([10, 20, 30, 10], 2),                   # xywh
        _ann([0, 0, 80, 60], 5, iscrowd=1),          # crowd: dropped in training
        _ann([40, 10, 60, 50], 0, mode=BoxMode.XYXY_ABS),
    ])
    out = mapper(record)
    assert set(out) == {"file_name", "height", "width", "image_id", "image", "instances"}
    assert (out["height"], out["width"], out["image_id"]) == (60, 80, 7)
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    # RGB channel order, flipped: red on the right, blue on the left.
    assert image[:, 15, 30].tolist() == [255, 0, 0]
    assert image[:, 15, 5].tolist() == [0, 0, 255]
    instances = out["instances"]
    assert instances.image_size == (30, 40)
    expected = torch.tensor([[40 - 20.0, 10.0, 40 - 5.0, 15.0], [40 - 30.0, 5.0, 40 - 20.0, 25.0]])
    torch.testing.assert_close(instances.gt_boxes.tensor, expected)
    assert instances.gt_classes.dtype == torch.int64
    assert instances.gt_classes.tolist() == [2, 0]
    assert len(record["annotations"]) == 3 and "image" not in record  # input left untouched


def test_crop_clips_and_drops_boxes(red_left_image):
    crop = T.CropTransform(20, 10, 40, 30)  # x0, y0, w, h
    mapper = DetrDatasetMapper(augmentation=[T.NoOpTransform()], augmentation_with_crop=[crop],
                               crop_prob=1.0)
    out = mapper(_record(red_left_image, [
        _ann([10, 5, 20, 20], 1),   # partly inside -> clipped to (0, 0, 10, 15)
        _ann([0, 0, 10, 60], 2),    # left of the crop -> dropped
        _ann([30, 20, 10, 10], 3),  # fully inside -> shifted
        _ann([75, 50, 5, 5], 4),    # right-bottom outside -> dropped
    ]))
    assert out["image"].shape == (3, 30, 40)
    torch.testing.assert_close(
        out["instances"].gt_boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 15.0], [10.0, 10.0, 20.0, 20.0]])
    )
    assert out["instances"].gt_classes.tolist() == [1, 3]


def test_eval_has_no_instances_and_keeps_original_size(red_left_image):
    mapper = DetrDatasetMapper(augmentation=detr_test_augmentation(min_size=120, max_size=200),
                               is_train=False)
    out = mapper(_record(red_left_image, [_ann([10, 20, 30, 10], 2)]))
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 120, 160)
    assert (out["height"], out["width"]) == (60, 80)


def test_image_without_annotations(red_left_image):
    mapper = DetrDatasetMapper(augmentation=detr_train_augmentation([32], max_size=64))
    out = mapper(_record(red_left_image, []))
    assert out["instances"].gt_boxes.tensor.shape == (0, 4)
    assert out["instances"].gt_classes.shape == (0,)
    assert len(mapper({k: v for k, v in _record(red_left_image, []).items() if k != "annotations"})
               ["instances"]) == 0


class _Counting(T.Augmentation):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def get_transform(self, image):
        self.calls += 1
        return T.NoOpTransform()


def test_branch_choice_follows_crop_prob(red_left_image):
    np.random.seed(0)
    plain, cropped = _Counting(), _Counting()
    mapper = DetrDatasetMapper(augmentation=[plain], augmentation_with_crop=[cropped])
    record = _record(red_left_image, [])
    for _ in range(200):
        mapper(record)
    assert plain.calls + cropped.calls == 200
    assert 70 < cropped.calls < 130  # p = 0.5: far outside this band has probability < 1e-3
    eval_mapper = DetrDatasetMapper(augmentation=[plain], augmentation_with_crop=[cropped], is_train=False)
    before = cropped.calls
    for _ in range(20):
        eval_mapper(record)
    assert cropped.calls == before


def _apply(augmentation, height, width):
    aug_input = T.AugInput(np.zeros((height, width, 3), np.uint8))
    transforms = T.AugmentationList(augmentation)(aug_input)
    return aug_input.image.shape[:2], transforms


def _expected_resize(height, width, short, max_size):
    """Independent reference of "shortest side to `short`, longest at most `max_size`"."""
    scale = min(short / min(height, width), max_size / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def test_train_resize_sizes_and_max_size():
    np.random.seed(1)
    min_sizes, max_size = [128, 144, 160, 176, 192], 256
    augmentation = detr_train_augmentation(min_sizes, max_size)
    assert isinstance(augmentation[0], T.RandomFlip)
    seen = set()
    for height, width in [(150, 180), (100, 300), (300, 120), (170, 170)] * 15:
        (h, w), _ = _apply(augmentation, height, width)
        assert max(h, w) <= max_size
        candidates = {_expected_resize(height, width, s, max_size) for s in min_sizes}
        assert (h, w) in candidates
        if max(h, w) < max_size - 1:
            seen.add(min(h, w))
    assert seen == set(min_sizes)


def test_crop_branch_crop_range():
    np.random.seed(2)
    augmentation = detr_crop_augmentation(
        min_sizes=[480, 512, 800], max_size=1333, crop_pre_resize_sizes=[400, 500, 600], crop_size=(384, 600)
    )
    crops = []
    for height, width in [(480, 640), (640, 427), (300, 1000)] * 10:
        (h, w), transforms = _apply(augmentation, height, width)
        crop = [t for t in transforms.transforms if isinstance(t, T.CropTransform)]
        assert len(crop) == 1
        crop = crop[0]
        resized = [t for t in transforms.transforms if isinstance(t, T.ResizeTransform)]
        pre_h, pre_w = resized[0].new_h, resized[0].new_w
        assert min(pre_h, pre_w) in (400, 500, 600)
        assert min(pre_h, 384) <= crop.h <= min(pre_h, 600)
        assert min(pre_w, 384) <= crop.w <= min(pre_w, 600)
        assert (h, w) in {_expected_resize(crop.h, crop.w, s, 1333) for s in (480, 512, 800)}
        crops.append((crop.h, crop.w))
    assert len(set(crops)) > 10  # the crop size is random


def test_test_resize_matches_reference():
    for height, width in [(480, 640), (1000, 200), (800, 800)]:
        (h, w), _ = _apply(detr_test_augmentation(), height, width)
        assert (h, w) == _expected_resize(height, width, 800, 1333)


def test_builders_reject_bad_sizes():
    with pytest.raises(ValueError, match="max_size=100"):
        detr_train_augmentation([128, 160], max_size=100)
    with pytest.raises(ValueError, match="crop_size"):
        detr_crop_augmentation(crop_size=(600, 384))
    with pytest.raises(ValueError, match="img_format"):
        DetrDatasetMapper(augmentation=[], img_format="YUV")
