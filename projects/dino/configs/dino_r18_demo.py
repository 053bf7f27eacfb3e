# DINO on the synthetic demo dataset (detrex_lite.data.demo), matched to
# projects/deformable_detr/configs/deformable_detr_r18_demo.py: the same backbone (ResNet-18 at
# half width, from scratch), width (d_model 128, FFN 512, 8 heads), depth (3 + 3 layers), 4
# levels x 4 points, no dropout, batch 4, 1200 iterations, lr 1e-3 with the same multipliers and
# drop, evaluation every 200 iterations and 50 detections per image.
#
#   python tools/train_net.py --config-file projects/dino/configs/dino_r18_demo.py
#
# Scaled like the Deformable DETR demo scales its paper config:
# * queries: the Deformable DETR demo keeps 50 of the paper's 300 (1/6); DINO's 900 become 150.
# * denoising: dn_number 30 gives 5 groups of positive + negative queries at the demo's at most 6
#   boxes per image (2 * 6 * 5 = 60 denoising queries), about the 4-7 groups that dn_number 100
#   gives a COCO batch (15-25 boxes in its fullest image).
#
# Ablations (each switch off), e.g. model.dn_number=0 / model.mixed_selection=False /
# model.look_forward_twice=False (docs/dino.md).
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset, shrink_model
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

from .models.dino_r50 import model

dataloader = get_config("common/data/demo_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

shrink_model(
    model, depth=18, stem_out_channels=32, freeze_at=0, num_groups=32,
    d_model=128, nhead=8, dim_feedforward=512, num_layers=3, dropout=0.0, num_queries=150,
    select_box_nums_for_evaluation=50,
)
model.dn_number = 30

EPOCHS, DECAY_EPOCHS, NUM_IMAGES = 8, 6.4, 600
dataloader.train.total_batch_size = 4
train.max_iter = epochs_to_iters(EPOCHS, total_batch_size=4, num_images=NUM_IMAGES)
lr_multiplier = default_detr_schedule(
    epochs=EPOCHS, decay_epochs=DECAY_EPOCHS, total_batch_size=4, num_images=NUM_IMAGES, warmup_iters=50
)

optimizer.lr = 1e-3
optimizer.params.lr_multipliers = {"sampling_offsets": 0.1, "reference_points": 0.1}
train.clip_grad.params.max_norm = 1.0

train.device = "cpu"
train.seed = 0
train.eval_period = 1 / 6
train.checkpointer = dict(period=0.5, max_to_keep=2)
train.log_period = 20
train.output_dir = "./output/dino_r18_demo"
