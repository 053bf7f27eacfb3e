"""The DETR training and test augmentations, as detectron2 augmentation lists.

DETR (Carion et al. 2020, appendix A.4) and Deformable DETR train with a horizontal flip and
then, with probability 0.5 each (chosen by ``DetrDatasetMapper``), either

* multi-scale resize: shortest side drawn from ``min_sizes`` (480..800 step 32), longest side
  at most ``max_size`` (1333); or
* resize the shortest side to one of ``crop_pre_resize_sizes`` (400, 500, 600), take a random
  crop with height and width each drawn from ``crop_size`` (384..600, clamped to the image),
  then the same multi-scale resize.

Test: shortest side ``min_size`` (800), longest at most ``max_size`` (1333).
The builders take the sizes as arguments so small-image configs (the demo) can scale them down.
"""
import detectron2.data.transforms as T

__all__ = [
    "COCO_TRAIN_MIN_SIZES",
    "detr_train_augmentation",
    "detr_crop_augmentation",
    "detr_test_augmentation",
]

COCO_TRAIN_MIN_SIZES = tuple(range(480, 801, 32))


def _check_sizes(sizes, max_size, what):
    sizes = [int(s) for s in sizes]
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"{what} must be a non-empty list of positive sizes, got {sizes}")
    if max_size < max(sizes):
        raise ValueError(f"max_size={max_size} is smaller than the largest of {what}={sizes}")
    return sizes


def detr_train_augmentation(min_sizes=COCO_TRAIN_MIN_SIZES, max_size=1333, random_flip="horizontal"):
    """Flip + multi-scale resize (the DETR branch without crop). Returns a list of Augmentations."""
    min_sizes = _check_sizes(min_sizes, max_size, "min_sizes")
    augmentation = []
    if random_flip in ("horizontal", "vertical"):
        augmentation.append(T.RandomFlip(horizontal=random_flip == "horizontal",
                                         vertical=random_flip == "vertical"))
    elif random_flip not in (None, "none"):
        raise ValueError(f"random_flip must be 'horizontal', 'vertical' or 'none', got {random_flip!r}")
    augmentation.append(T.ResizeShortestEdge(min_sizes, max_size=max_size, sample_style="choice"))
    return augmentation


def detr_crop_augmentation(
    min_sizes=COCO_TRAIN_MIN_SIZES,
    max_size=1333,
    crop_pre_resize_sizes=(400, 500, 600),
    crop_size=(384, 600),
    random_flip="horizontal",
):
    """Flip + resize to ``crop_pre_resize_sizes`` + random crop of ``crop_size`` (min, max) in
    pixels + multi-scale resize. Returns a list of Augmentations."""
    min_sizes = _check_sizes(min_sizes, max_size, "min_sizes")
    pre_sizes = _check_sizes(crop_pre_resize_sizes, float("inf"), "crop_pre_resize_sizes")
    crop_min, crop_max = (int(v) for v in crop_size)
    if not 0 < crop_min <= crop_max:
        raise ValueError(f"crop_size must be (min, max) with 0 < min <= max, got {crop_size}")
    flip_and_resize = detr_train_augmentation(min_sizes, max_size, random_flip)
    return flip_and_resize[:-1] + [
        T.ResizeShortestEdge(pre_sizes, sample_style="choice"),
        T.RandomCrop("absolute_range", (crop_min, crop_max)),
        flip_and_resize[-1],
    ]


def detr_test_augmentation(min_size=800, max_size=1333):
    """Resize the shortest side to ``min_size`` with the longest at most ``max_size``."""
    _check_sizes([min_size], max_size, "min_size")
    return [T.ResizeShortestEdge(int(min_size), max_size=max_size)]
