# Deformable DETR, ResNet-50, single scale (C5 only), 50 epochs (official repo: 39.4 AP).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.out_features = ["res5"]
model.neck.input_shapes = {"res5": model.neck.input_shapes.res5}
model.neck.in_features = ["res5"]
model.transformer.num_feature_levels = 1

train.output_dir = "./output/deformable_detr_r50_single_scale_50ep"
