# DINO-4scale, ResNet-50, 24 epochs, lr x0.1 after epoch 20 (paper Table 2: 50.4 AP).
from detrex_lite.solver import default_detr_schedule, epochs_to_iters

from .dino_r50_4scale_12ep import BATCH, dataloader, model, optimizer, train

EPOCHS, DECAY_EPOCHS = 24, 20
train.max_iter = epochs_to_iters(EPOCHS, total_batch_size=BATCH)
lr_multiplier = default_detr_schedule(epochs=EPOCHS, decay_epochs=DECAY_EPOCHS, total_batch_size=BATCH)
train.output_dir = "./output/dino_r50_4scale_24ep"
