# Optimizers. train_net sets `optimizer.params.model = model` before instantiating.
import torch

from detectron2.config import LazyCall as L

from detrex_lite.solver import get_param_groups

# The official Deformable DETR / DETR recipe: AdamW, lr 2e-4 (DETR: 1e-4), weight decay 1e-4,
# backbone at 0.1x lr, and in Deformable DETR the sampling offsets and reference points at 0.1x.
AdamW = L(torch.optim.AdamW)(
    params=L(get_param_groups)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        lr_multipliers={"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1},
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)
