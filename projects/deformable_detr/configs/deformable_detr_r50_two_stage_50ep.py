# Two-stage Deformable DETR (with box refinement), ResNet-50, 50 epochs (paper: 46.2 AP).
from .deformable_detr_r50_with_box_refinement_50ep import dataloader, lr_multiplier, model, optimizer, train

model.as_two_stage = True  # the transformer follows through "${..as_two_stage}"

train.output_dir = "./output/deformable_detr_r50_two_stage_50ep"
