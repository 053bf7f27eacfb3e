# DETR, ResNet-101, 500 epochs (paper Table 1, "DETR-R101": 43.5 AP).
from .detr_r50_500ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.depth = 101

train.output_dir = "./output/detr_r101_500ep"
