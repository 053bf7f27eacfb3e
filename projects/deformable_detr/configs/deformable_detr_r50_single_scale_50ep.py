# Deformable DETR, ResNet-50, single scale (C5 only), 50 epochs (official repo: 39.4 AP).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.out_features = ["res5"]  # the neck follows (its in_features and input_shapes)
model.transformer.num_feature_levels = 1

train.output_dir = "./output/deformable_detr_r50_single_scale_50ep"
