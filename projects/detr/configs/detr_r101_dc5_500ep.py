# DETR-DC5, ResNet-101, 500 epochs (paper Table 1, "DETR-DC5-R101": 44.9 AP).
from .detr_r101_500ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.res5_dilation = 2

train.output_dir = "./output/detr_r101_dc5_500ep"
