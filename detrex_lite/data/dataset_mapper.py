"""DetrDatasetMapper: one detectron2 dataset dict -> the model's input dict."""
import copy
import logging

import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager
from PIL import Image
from detrex_lite.errors import ImageNotFoundError, ImageReadError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

__all__ = ["DetrDatasetMapper", "ImageReadError", "non_crowd_boxes", "read_image", "read_image_file"]

# Single-channel 16-bit images (PNG, TIFF). PIL's convert("RGB") clips them at 255 (white).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Modes whose values have no faithful 8-bit reading (range unknown): refused.
_UNREPRESENTABLE_MODES = {"I": "32-bit integer", "F": "32-bit float"}


def non_crowd_boxes(annotations: list) -> tuple:
    """The non-crowd annotations of a detectron2 dataset dict as (G, 4) float64 absolute xyxy boxes
    (any ``bbox_mode`` converted) and their ``category_id`` list."""
    annotations = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), [a["category_id"] for a in annotations]


def read_image(file_name: str, img_format: str = "RGB") -> np.ndarray:
    """Read an image as uint8 (H, W, 3) in `img_format` ("RGB" or "BGR"), EXIF orientation applied.

    16-bit single-channel images are scaled to 8 bits (value / 257, rounded: 65535 -> 255);
    16-bit RGB PNGs are reduced to 8 bits by PIL itself. 32-bit integer or float images raise
    ValueError naming the mode (no faithful 8-bit reading exists); convert them first.
    """
    with PathManager.open(file_name, "rb") as f:
        image = utils._apply_exif_orientation(Image.open(f))
        if image.mode in _SIXTEEN_BIT_MODES:
            gray = np.round(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if image.mode in _UNREPRESENTABLE_MODES:
            raise ValueError(
                f"image mode {image.mode!r} ({_UNREPRESENTABLE_MODES[image.mode]} pixels) has no faithful "
                "8-bit reading; convert the file to an 8-bit RGB or grayscale image"
            )
        return utils.convert_PIL_to_numpy(image, img_format)


_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what PIL raises for broken files


def read_image_file(file_name: str, img_format: str = "RGB", what: str = "") -> np.ndarray:
    """:func:`read_image` for inference and the tools (one reader for training and inference):
    every failure is an ImageReadError naming the file (and ``what``, e.g. "image_id=5")."""
    try:
        return read_image(file_name, img_format)
    except _READ_ERRORS as e:
        where = f" ({what})" if what else ""
        error = ImageNotFoundError if isinstance(e, FileNotFoundError) else ImageReadError
        raise error(f"Cannot read image {file_name}{where}: {type(e).__name__}: {e}") from e


class DetrDatasetMapper:
    """Read an image, augment it, and build the detectron2 model input.

    Returns ``{"image": uint8 (3, H, W) in ``img_format`` order (RGB by default), "height",
    "width" (original size), "file_name", "image_id", and in training "instances":
    Instances(gt_boxes=Boxes absolute xyxy in the augmented image, gt_classes int64)}``.

    Training: with probability ``1 - crop_prob`` the ``augmentation`` list is applied, else
    ``augmentation_with_crop`` (DETR's two branches, see ``detrex_lite.data.transforms``). Crowd
    annotations (``iscrowd=1``) are dropped; boxes are clipped to the augmented image and the
    ones left with no area (e.g. cropped away) are removed. An image may end with no boxes.
    Evaluation: only ``augmentation``; annotations are removed.

    An unreadable image (missing or corrupt file) raises :class:`ImageReadError` naming the file
    and image id. With ``skip_unreadable=True`` (training only) it is logged by name and skipped
    instead: detectron2's dataset wrapper then draws another image.
    """

    def __init__(
        self,
        augmentation,
        augmentation_with_crop=None,
        is_train=True,
        img_format="RGB",
        crop_prob=0.5,
        skip_unreadable=False,
    ):
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"img_format must be 'RGB' or 'BGR', got {img_format!r}")
        if not 0.0 <= crop_prob <= 1.0:
            raise ValueError(f"crop_prob must be in [0, 1], got {crop_prob}")
        self.augmentation = T.AugmentationList(list(augmentation))
        self.augmentation_with_crop = (
            T.AugmentationList(list(augmentation_with_crop))
            if augmentation_with_crop is not None and is_train else None
        )
        self.is_train = is_train
        self.img_format = img_format
        self.crop_prob = crop_prob
        if skip_unreadable and not is_train:
            logger.warning("skip_unreadable applies to training only: evaluation still stops at an "
                           "unreadable image (skipping it would change the metric)")
        self.skip_unreadable = skip_unreadable and is_train
        logger.info(
            "DetrDatasetMapper (%s): augmentation %s; with crop %s", "train" if is_train else "test",
            self.augmentation, self.augmentation_with_crop,
        )

    def _read_image(self, dataset_dict):
        file_name = dataset_dict["file_name"]
        try:
            image = read_image_file(file_name, self.img_format, f"image_id={dataset_dict.get('image_id')}")
        except ImageReadError as e:
            if self.skip_unreadable:
                logger.warning("%s; skipped (skip_unreadable=True)", e)
                return None
            raise
        utils.check_image_size(dataset_dict, image)
        return image

    def _transform_annotations(self, annotations, transforms, image_size):
        """Non-crowd boxes through ``transforms``, clipped to ``image_size`` = (H, W); empty ones dropped."""
        boxes, classes = non_crowd_boxes(annotations)
        classes = np.array(classes, dtype=np.int64)
        if len(boxes):
            boxes = transforms.apply_box(boxes)
        height, width = image_size
        boxes = boxes.clip(0.0, [width, height, width, height])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        instances = Instances(image_size)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes[keep], dtype=torch.float32))
        instances.gt_classes = torch.as_tensor(classes[keep], dtype=torch.int64)
        return instances

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)  # the caller's dict is reused across epochs
        image = self._read_image(dataset_dict)
        if image is None:
            return None
        augmentation = self.augmentation
        if self.augmentation_with_crop is not None and np.random.rand() < self.crop_prob:
            augmentation = self.augmentation_with_crop
        aug_input = T.AugInput(image)
        transforms = augmentation(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", None)
        if self.is_train:
            dataset_dict["instances"] = self._transform_annotations(
                annotations or [], transforms, image.shape[:2]
            )
        return dataset_dict
