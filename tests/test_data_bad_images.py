"""Unreadable images: clear errors by default, opt-in skipping, no hang in DataLoader workers."""
import logging
import signal
import time

import numpy as np
import pytest
from detectron2.data import build_detection_train_loader
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.structures import BoxMode
from PIL import Image

from detrex_lite.data import DetrDatasetMapper, ImageReadError, detr_train_augmentation, read_image


def _record(file_name, image_id=5, height=32, width=48):
    return {"file_name": file_name, "height": height, "width": width, "image_id": image_id,
            "annotations": [{"bbox": [1, 1, 10, 10], "bbox_mode": BoxMode.XYWH_ABS,
                             "category_id": 0, "iscrowd": 0}]}


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(good)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    return {"good": str(good), "garbage": str(garbage), "truncated": str(truncated),
            "missing": str(tmp_path / "missing.jpg")}


def _mapper(is_train=True, skip_unreadable=False):
    return DetrDatasetMapper(augmentation=detr_train_augmentation([32], max_size=64), is_train=is_train,
                             skip_unreadable=skip_unreadable)


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
@pytest.mark.parametrize("is_train", [True, False])
def test_unreadable_image_raises_naming_file_and_image_id(files, kind, is_train):
    with pytest.raises(ImageReadError) as error:
        _mapper(is_train)(_record(files[kind], image_id=1234))
    assert files[kind] in str(error.value)
    assert "image_id=1234" in str(error.value)


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_skip_unreadable_logs_by_name_and_returns_none(files, kind, caplog):
    mapper = _mapper(skip_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="detrex_lite.data.dataset_mapper"):
        assert mapper(_record(files[kind])) is None
    assert any(files[kind] in r.getMessage() for r in caplog.records)
    assert mapper(_record(files["good"]))["image"].shape[0] == 3


def test_skip_unreadable_does_not_apply_to_evaluation(files):
    """Skipping in evaluation would silently change the metric: it still raises there."""
    mapper = _mapper(is_train=False, skip_unreadable=True)
    with pytest.raises(ImageReadError):
        mapper(_record(files["missing"]))


def test_size_mismatch_with_annotation_names_file(files):
    with pytest.raises(SizeMismatchError, match="good.jpg"):
        _mapper()(_record(files["good"], height=40, width=48))


def test_train_loader_skips_unreadable_when_asked(files):
    dataset = [_record(files["missing"], image_id=1)] + [_record(files["good"], image_id=i) for i in (2, 3)]
    loader = build_detection_train_loader(dataset, mapper=_mapper(skip_unreadable=True),
                                          total_batch_size=2, num_workers=0)
    batches = [batch for _, batch in zip(range(5), loader)]
    assert {d["image_id"] for batch in batches for d in batch} <= {2, 3}


def _alarm(signum, frame):
    raise TimeoutError("iterating the data loader hung")


def test_worker_error_propagates_promptly(files):
    """An exception inside a DataLoader worker process reaches the training loop (no hang)."""
    dataset = [_record(files["good"], image_id=1), _record(files["garbage"], image_id=2)]
    loader = build_detection_train_loader(dataset, mapper=_mapper(), total_batch_size=2, num_workers=2)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    start = time.monotonic()
    try:
        with pytest.raises(ImageReadError, match="garbage.jpg"):
            for _ in loader:
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 60


def test_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    values = np.array([[0, 4883, 39835, 65535]] * 8, dtype=np.uint16)  # (8, 4)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"  # what made PIL's convert("RGB") clip at 255
    image = read_image(str(path), "RGB")
    assert image.dtype == np.uint8 and image.shape == (8, 4, 3)
    expected = np.array([0, 19, 155, 255], dtype=np.uint8)  # round(v / 257)
    assert (image == expected[None, :, None]).all()
    record = _record(str(path), height=8, width=4)
    out = DetrDatasetMapper(augmentation=[], is_train=False)(record)
    assert out["image"][:, 0, :].tolist() == [expected.tolist()] * 3


def test_float_image_is_refused_naming_file_and_mode(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((32, 48), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(ImageReadError) as error:
        _mapper()(_record(str(path), image_id=77))
    assert str(path) in str(error.value) and "image_id=77" in str(error.value)
    assert "image mode 'F' (32-bit float pixels) has no faithful 8-bit reading" in str(error.value)


def test_image_over_pils_pixel_limit_is_named_and_skippable(tmp_path, monkeypatch, caplog):
    """PIL's DecompressionBombError is no OSError: it used to escape as a traceback without the file
    name, and skip_unreadable=True did not skip it. (The limit is lowered here so that a 20 x 20
    image is over it, as a 15000 x 15000 one is over the real 178 M-pixel limit.)"""
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    record = _record(str(path), height=20, width=20)
    with pytest.raises(ImageReadError, match=rf"^Cannot read image {path} \(image_id=5\): DecompressionBombError"):
        _mapper()(dict(record))
    with caplog.at_level(logging.WARNING):
        assert _mapper(skip_unreadable=True)(dict(record)) is None
    assert "huge.png" in caplog.text and "skipped" in caplog.text
