# As deformable_detr_r50_50ep.py with a ResNet-101 backbone.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.depth = 101

train.output_dir = "./output/deformable_detr_r101_50ep"
