# The training recipe of the demo configs (projects/<family>/configs/*_r18_demo.py): the synthetic
# demo data (common/data/demo_detr.py), AdamW, the schedule and the CPU run settings. Every
# family's demo config takes it whole, so the matched runs that docs/demo.md compares cannot drift
# apart; a demo config sets only its model, its learning rate and parameter groups, and its
# output folder.
#
#   _recipe = get_config("common/demo_recipe.py")
#   dataloader, optimizer, train = _recipe.dataloader, _recipe.optimizer, _recipe.train
#   lr_multiplier = _recipe.lr_multiplier  (a leading "_": LazyConfig keeps no copy of the recipe itself)
from detrex_lite.config import get_config
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

dataloader = get_config("common/data/demo_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

# 600 training images at batch 4 = 150 iterations per epoch; 8 epochs, lr x0.1 after 6.4
# (80 %, as 40 of 50 epochs in the paper).
EPOCHS, DECAY_EPOCHS, NUM_IMAGES = 8, 6.4, 600
dataloader.train.total_batch_size = 4
train.max_iter = epochs_to_iters(EPOCHS, total_batch_size=4, num_images=NUM_IMAGES)
lr_multiplier = default_detr_schedule(
    epochs=EPOCHS, decay_epochs=DECAY_EPOCHS, total_batch_size=4, num_images=NUM_IMAGES, warmup_iters=50
)

train.clip_grad.params.max_norm = 1.0
train.device = "cpu"
train.seed = 0
train.eval_period = 1 / 6  # derived: every max_iter / 6 iterations (200 of 1200), an AP curve of 6 points
train.checkpointer = dict(period=0.5, max_to_keep=2)  # derived: at max_iter / 2 and at the end
train.log_period = 20
