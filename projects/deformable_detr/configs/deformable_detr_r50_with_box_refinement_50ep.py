# Deformable DETR, ResNet-50, iterative bounding box refinement, 50 epochs (paper Table 1: 45.4 AP;
# official repo: 46.2).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True

train.output_dir = "./output/deformable_detr_r50_with_box_refinement_50ep"
