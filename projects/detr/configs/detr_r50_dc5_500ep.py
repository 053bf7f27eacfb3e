# DETR-DC5, ResNet-50, 500 epochs (paper Table 1, "DETR-DC5": 43.3 AP): res5 keeps stride 16
# (stride 1 in its first block) and dilates its 3x3 convs by 2.
from .detr_r50_500ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.res5_dilation = 2

train.output_dir = "./output/detr_r50_dc5_500ep"
