# DINO on the synthetic demo dataset (detrex_lite.data.demo), matched to
# projects/deformable_detr/configs/deformable_detr_r18_demo.py by construction: its data, batch,
# iterations, optimizer (lr 1e-3, the same multipliers), schedule, clipping, evaluation points
# and train settings are taken from that file, and the model is shrunk to its sizes (ResNet-18 at
# half width from scratch, d_model 128, FFN 512, 8 heads, 3 + 3 layers, 4 levels x 4 points, no
# dropout, 50 detections per image).
#
#   python tools/train_net.py --config-file projects/dino/configs/dino_r18_demo.py
#
# Scaled like the Deformable DETR demo scales its paper config:
# * queries: the Deformable DETR demo keeps 50 of the paper's 300 (1/6); DINO's 900 become 150.
# * denoising: dn_number 30 gives 5 groups of positive + negative queries at the demo's at most 6
#   boxes per image (2 * 6 * 5 = 60 denoising queries), about the 4-7 groups that dn_number 100
#   gives a COCO batch (15-25 boxes in its fullest image).
#
# Ablations (each switch off), e.g. model.dn_number=0 / model.mixed_selection=False /
# model.look_forward_twice=False (docs/dino.md).
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from detrex_lite.config import num_classes_from_dataset, shrink_model

from .models.dino_r50 import model

_demo = LazyConfig.load_rel("../../deformable_detr/configs/deformable_detr_r18_demo.py")
dataloader = _demo.dataloader
optimizer = _demo.optimizer
lr_multiplier = _demo.lr_multiplier
train = _demo.train

model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")

_dd = _demo.model
shrink_model(
    model, depth=_dd.backbone.depth, stem_out_channels=_dd.backbone.stem_out_channels,
    freeze_at=_dd.backbone.freeze_at, num_groups=_dd.neck.num_groups, d_model=_dd.transformer.d_model,
    nhead=_dd.transformer.nhead, dim_feedforward=_dd.transformer.dim_feedforward,
    num_layers=_dd.transformer.num_encoder_layers, dropout=_dd.transformer.dropout,
    num_queries=3 * _dd.num_queries,  # 900 / 300 x the demo's 50
    select_box_nums_for_evaluation=_dd.select_box_nums_for_evaluation,
)
model.dn_number = 30

train.output_dir = "./output/dino_r18_demo"
