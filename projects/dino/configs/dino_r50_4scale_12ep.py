# DINO-4scale, ResNet-50, 12 epochs (paper Table 1: 49.0 AP; official repo: 49.0).
from detectron2.config import LazyCall as L

from detrex_lite.config import get_config, num_classes_from_dataset
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

from .models.dino_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

# The class count comes from the training set's metadata (80 for COCO).
model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

# Official recipe: total batch 16 (e.g. 8 GPUs x 2), AdamW lr 1e-4, weight decay 1e-4, the
# backbone and the deformable attention's sampling offsets / reference points at 0.1x, gradient
# clipping 0.1, 12 epochs with lr x0.1 after epoch 11.
EPOCHS, DECAY_EPOCHS, BATCH = 12, 11, 16
dataloader.train.total_batch_size = BATCH
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
train.max_iter = epochs_to_iters(EPOCHS, total_batch_size=BATCH)
lr_multiplier = default_detr_schedule(epochs=EPOCHS, decay_epochs=DECAY_EPOCHS, total_batch_size=BATCH)
train.output_dir = "./output/dino_r50_4scale_12ep"
