# As dino_r50_4scale_12ep.py with a ResNet-101 backbone (no official DINO number: detrex reports
# 50.0 AP for its R101 DINO-4scale 12-epoch model).
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.depth = 101

train.output_dir = "./output/dino_r101_4scale_12ep"
