# Two-stage Deformable DETR (with box refinement), ResNet-50, 50 epochs (paper Table 1: 46.2 AP;
# official repo: 46.9).
from .deformable_detr_r50_with_box_refinement_50ep import dataloader, lr_multiplier, model, optimizer, train

model.as_two_stage = True  # the transformer follows through "${..as_two_stage}"

train.output_dir = "./output/deformable_detr_r50_two_stage_50ep"
