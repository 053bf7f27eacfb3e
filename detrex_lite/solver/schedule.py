"""Epoch-based step schedules expressed in iterations, as detectron2 trains by iteration."""
import math

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

# COCO train2017 has 118,287 images. The DETR-family recipes train on all of them, the 1,021
# images without annotations included (the official code iterates over every image id, and
# configs/common/data/coco_detr.py sets filter_empty=False to match), so an epoch is 118,287 images.
COCO_TRAIN2017_NUM_IMAGES = 118287


def iters_per_epoch(total_batch_size: int, num_images: int = COCO_TRAIN2017_NUM_IMAGES) -> int:
    """Iterations that see every image once (the last, partial batch counts as one)."""
    if total_batch_size <= 0 or num_images <= 0:
        raise ValueError(f"total_batch_size={total_batch_size} and num_images={num_images} must be > 0")
    return math.ceil(num_images / total_batch_size)


def epochs_to_iters(
    epochs: float, total_batch_size: int, num_images: int = COCO_TRAIN2017_NUM_IMAGES
) -> int:
    """`epochs` of `num_images` images at `total_batch_size` images per iteration."""
    return int(round(epochs * iters_per_epoch(total_batch_size, num_images)))


def default_detr_schedule(
    epochs: int,
    decay_epochs: int,
    total_batch_size: int,
    num_images: int = COCO_TRAIN2017_NUM_IMAGES,
    warmup_iters: int = 0,
    decay_factor: float = 0.1,
):
    """The DETR-family step schedule: constant lr, x`decay_factor` at `decay_epochs`.

    Returns a LazyCall of WarmupParamScheduler (a multiplier of the base lr, evaluated at
    iter / train.max_iter). Pair it with `train.max_iter = epochs_to_iters(epochs, ...)`. If
    train.max_iter is later changed (e.g. a short run), the drop stays at the same fraction of
    training, because the scheduler is evaluated on the fraction of training done.
    """
    max_iter = epochs_to_iters(epochs, total_batch_size, num_images)
    decay_iter = epochs_to_iters(decay_epochs, total_batch_size, num_images)
    if not 0 < decay_iter < max_iter:
        raise ValueError(f"decay_epochs={decay_epochs} must lie strictly inside (0, epochs={epochs})")
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, decay_factor], milestones=[decay_iter], num_updates=max_iter
        ),
        warmup_length=warmup_iters / max_iter,
        # No warm-up in the official recipes: with warmup_iters=0 the factor is irrelevant.
        warmup_factor=0.001 if warmup_iters > 0 else 1.0,
    )
