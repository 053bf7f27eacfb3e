# DINO, ResNet-50, 4 scales (C3-C5 + one stride-64 level). Paper settings (Zhang et al. 2023,
# Sec. 4.1 and the official DINO_4scale config): 6+6 layers, d=256, FFN 2048, dropout 0, 8 heads,
# 4 levels x 4 points, 900 queries, sine position embedding with temperature 20, focal loss with
# costs/weights class 1 (weight) / 2 (cost), L1 5, GIoU 2 for every stage (decoder layers, encoder
# tokens, denoising), CDN with dn_number 100, label noise 0.5, box noise 1.0.
#
# Built on Deformable DETR's R50 model config: the same backbone (the stem and res2 frozen,
# FrozenBN everywhere, torchvision weights), neck, pixel statistics, encoder/decoder shape
# (6+6 layers, d=256, 8 heads, 4 levels x 4 points) and matcher; the fields set below differ.
#
# The three switches (each a command-line override for an ablation):
#   model.dn_number=0               contrastive denoising off
#   model.mixed_selection=False     pure query selection (content queries from the encoder too)
#   model.look_forward_twice=False  Deformable DETR's detached box refinement
from detectron2.config import LazyCall as L

from projects.dino.modeling import DINO, DINOCriterion, DINOTransformer

from ....deformable_detr.configs.models.deformable_detr_r50 import model as _deformable_detr

model = L(DINO)(
    backbone=_deformable_detr.backbone,
    neck=_deformable_detr.neck,
    position_embedding=_deformable_detr.position_embedding,
    transformer=_deformable_detr.transformer,
    num_classes=80,
    num_queries=900,
    criterion=_deformable_detr.criterion,
    aux_loss=True,
    dn_number=100,
    label_noise_ratio=0.5,
    box_noise_scale=1.0,
    mixed_selection=True,
    look_forward_twice=True,
    share_heads=True,
    # The official DINO evaluation keeps 300 detections per image.
    select_box_nums_for_evaluation=300,
    pixel_mean=_deformable_detr.pixel_mean,
    pixel_std=_deformable_detr.pixel_std,
    batch_invariant_inference=True,
)

# Official DINO: temperature 20 and positions not shifted to pixel centres (offset 0).
model.position_embedding.temperature = 20
model.position_embedding.offset = 0.0

# Always two-stage (query selection from the encoder): Deformable DETR's two-stage switches go.
model.transformer._target_ = DINOTransformer
model.transformer.dim_feedforward = 2048
model.transformer.dropout = 0.0
del model.transformer.two_stage, model.transformer.two_stage_num_proposals
model.transformer.num_queries = "${..num_queries}"
model.transformer.num_classes = "${..num_classes}"
model.transformer.mixed_selection = "${..mixed_selection}"
model.transformer.look_forward_twice = "${..look_forward_twice}"

# Base weights of every stage: final, auxiliary, encoder, denoising.
model.criterion._target_ = DINOCriterion
model.criterion.weight_dict.loss_class = 1.0
