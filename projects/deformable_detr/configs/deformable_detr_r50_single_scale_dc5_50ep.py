# Deformable DETR, ResNet-50 DC5, single scale, 50 epochs (official repo: 41.5 AP).
from .deformable_detr_r50_single_scale_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.res5_dilation = 2  # res5 at stride 16; the neck's input shapes follow

train.output_dir = "./output/deformable_detr_r50_single_scale_dc5_50ep"
