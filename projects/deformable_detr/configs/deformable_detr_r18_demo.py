# Deformable DETR on the synthetic demo dataset (detrex_lite.data.demo): trains from scratch and
# evaluates on a 2-core CPU in about 10 minutes. The shipped R50 model config, shrunk:
# ResNet-18 at half width (res3/res4/res5 = 64/128/256 channels), d_model 128, 3 + 3 layers,
# 4 feature levels x 4 points, 50 queries, iterative box refinement, no dropout.
#
#   python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo.py
#
# projects/detr/configs/detr_r18_demo.py is the matched DETR (same backbone, width, depth,
# iterations, batch and schedule shape); docs/demo.md compares the two.
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset, shrink_model
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

from .models.deformable_detr_r50 import model

dataloader = get_config("common/data/demo_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

# The class count comes from the training set's metadata (6 shapes).
model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

# No pretrained weights can be assumed: the whole backbone trains (freeze_at=0), from random
# initialisation. ResNet-18 at half width (stem 32); FrozenBN with its default statistics is the
# identity, so the network is a plain (normalisation-free) ResNet, as in the overfit tests.
# No dropout: a short run, regularisation only slows it down. At most 6 objects per demo image.
shrink_model(
    model, depth=18, stem_out_channels=32, freeze_at=0, num_groups=32,
    d_model=128, nhead=8, dim_feedforward=512, num_layers=3, dropout=0.0, num_queries=50,
)
model.with_box_refine = True

# 600 training images at batch 4 = 150 iterations per epoch; 8 epochs, lr x0.1 after 6.4
# (80 %, as 40 of 50 epochs in the paper).
EPOCHS, DECAY_EPOCHS, NUM_IMAGES = 8, 6.4, 600
dataloader.train.total_batch_size = 4
train.max_iter = epochs_to_iters(EPOCHS, total_batch_size=4, num_images=NUM_IMAGES)
lr_multiplier = default_detr_schedule(
    epochs=EPOCHS, decay_epochs=DECAY_EPOCHS, total_batch_size=4, num_images=NUM_IMAGES, warmup_iters=50
)

# From scratch the backbone gets the full lr (the 0.1x of the official recipe is for an
# ImageNet-pretrained backbone); the sampling offsets and reference points keep 0.1x.
optimizer.lr = 1e-3
optimizer.params.lr_multipliers = {"sampling_offsets": 0.1, "reference_points": 0.1}
train.clip_grad.params.max_norm = 1.0

train.device = "cpu"
train.seed = 0
train.eval_period = 1 / 6  # derived: every max_iter / 6 iterations (200 of 1200), an AP curve of 6 points
train.checkpointer = dict(period=0.5, max_to_keep=2)  # derived: at max_iter / 2 and at the end
train.log_period = 20
train.output_dir = "./output/deformable_detr_r18_demo"
