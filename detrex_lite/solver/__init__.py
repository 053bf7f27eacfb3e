"""Optimizer parameter groups and epoch-based learning-rate schedules."""
from .param_groups import get_param_groups
from .schedule import (
    COCO_TRAIN2017_NUM_IMAGES,
    SchedulePeriods,
    default_detr_schedule,
    epochs_to_iters,
    iters_per_epoch,
    period_to_iters,
    schedule_periods,
)

__all__ = [
    "COCO_TRAIN2017_NUM_IMAGES",
    "default_detr_schedule",
    "epochs_to_iters",
    "get_param_groups",
    "iters_per_epoch",
    "period_to_iters",
    "schedule_periods",
    "SchedulePeriods",
]
