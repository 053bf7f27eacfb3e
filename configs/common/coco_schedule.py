# Learning-rate schedules for COCO train2017, computed from epochs (detrex_lite.solver: all
# 118,287 images, as the official recipes and configs/common/data/coco_detr.py use) and the
# total batch size.
#
#   lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
#   train.max_iter = get_config("common/coco_schedule.py").max_iter.ep50
#
# Both come from the same helper, so they cannot disagree. The lr drop is derived from
# train.max_iter (the scheduler is evaluated at iter / max_iter), so it stays at 80 % of a run whose
# train.max_iter is overridden; so do train.eval_period and train.checkpointer.period
# (fractions, common/train.py).
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

# Deformable DETR: 50 epochs at total batch 32, lr x0.1 at epoch 40.
lr_multiplier_50ep = default_detr_schedule(epochs=50, decay_epochs=40, total_batch_size=32)
# DETR: 500 epochs at total batch 64, lr x0.1 at epoch 400.
lr_multiplier_500ep = default_detr_schedule(epochs=500, decay_epochs=400, total_batch_size=64)
# DETR's shorter 150-epoch schedule (drop at 100), as in the DETR paper's ablations.
lr_multiplier_150ep = default_detr_schedule(epochs=150, decay_epochs=100, total_batch_size=64)

# train.max_iter for each schedule above (a dict because LazyConfig keeps only config objects).
max_iter = dict(
    ep50=epochs_to_iters(50, total_batch_size=32),
    ep500=epochs_to_iters(500, total_batch_size=64),
    ep150=epochs_to_iters(150, total_batch_size=64),
)
