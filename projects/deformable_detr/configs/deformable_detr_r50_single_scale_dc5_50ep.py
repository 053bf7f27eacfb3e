# Deformable DETR, ResNet-50 DC5, single scale, 50 epochs (official repo: 41.5 AP).
from .deformable_detr_r50_single_scale_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.res5_dilation = 2
model.neck.input_shapes.res5.stride = 16

train.output_dir = "./output/deformable_detr_r50_single_scale_dc5_50ep"
