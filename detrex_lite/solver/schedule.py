"""Epoch-based step schedules expressed in iterations, as detectron2 trains by iteration."""
import math
from typing import NamedTuple

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


class SchedulePeriods(NamedTuple):
    """How often training evaluates and saves, in iterations (resolved from the config)."""

    eval_period: int  # 0: evaluate only at the end
    checkpoint_period: int


_FRACTION_FORM = "a float in (0, 1] (fraction of train.max_iter)"


def period_to_iters(value, max_iter: int, key: str, allow_zero: bool = False) -> int:
    """A period as a number of iterations.

    Args:
        value: an int is a number of iterations; a float in (0, 1] is a fraction of `max_iter`
            (0.1: ten times over the run), rounded to the nearest iteration and at least 1, so
            that the period follows a `train.max_iter` override.
        max_iter: train.max_iter.
        key: the config key, named in the error.
        allow_zero: whether 0 ("never periodically") is allowed.

    Raises:
        ValueError: a negative int, a float outside (0, 1], or anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}={value!r}: expected an int (iterations) or {_FRACTION_FORM}")
    if isinstance(value, int):
        if value < 0 or (value == 0 and not allow_zero):
            smallest = 0 if allow_zero else 1
            raise ValueError(f"{key}={value}: expected an int >= {smallest} (iterations) or {_FRACTION_FORM}")
        return value
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"{key}={value}: a float is a fraction of train.max_iter and must lie in (0, 1]; "
            "give a number of iterations as an int"
        )
    return max(1, int(round(value * max_iter)))


def schedule_periods(train) -> SchedulePeriods:
    """`train.eval_period` and `train.checkpointer.period` in iterations for `train.max_iter`.

    Computed when training starts, so that fractions follow `train.max_iter` overrides (OmegaConf
    interpolation cannot multiply). Raises ValueError naming the key at fault.
    """
    max_iter = train.max_iter
    checkpointer = train.get("checkpointer", None) or {}
    return SchedulePeriods(
        eval_period=period_to_iters(train.get("eval_period", 0), max_iter, "train.eval_period", allow_zero=True),
        checkpoint_period=period_to_iters(checkpointer.get("period", 1.0), max_iter, "train.checkpointer.period"),
    )
