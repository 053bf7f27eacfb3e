# DINO, ResNet-50, 4 scales (C3-C5 + one stride-64 level). Paper settings (Zhang et al. 2023,
# Sec. 4.1 and the official DINO_4scale config): 6+6 layers, d=256, FFN 2048, dropout 0, 8 heads,
# 4 levels x 4 points, 900 queries, sine position embedding with temperature 20, focal loss with
# costs/weights class 1 (weight) / 2 (cost), L1 5, GIoU 2 for every stage (decoder layers, encoder
# tokens, denoising), CDN with dn_number 100, label noise 0.5, box noise 1.0.
#
# The three switches (each a command-line override for an ablation):
#   model.dn_number=0               contrastive denoising off
#   model.mixed_selection=False     pure query selection (content queries from the encoder too)
#   model.look_forward_twice=False  Deformable DETR's detached box refinement
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from detrex_lite.layers import PositionEmbeddingSine
from detrex_lite.modeling import HungarianMatcher
from projects.dino.modeling import DINO, DINOCriterion, DINOTransformer

# The backbone and the neck are Deformable DETR's (ResNet-50 res3-res5 with the stem and res2
# frozen, FrozenBN, torchvision weights; input_proj as a ChannelMapper with GroupNorm and a
# stride-64 fourth level), taken from its model config rather than written again.
_ddetr = LazyConfig.load_rel("../../../deformable_detr/configs/models/deformable_detr_r50.py").model

model = L(DINO)(
    backbone=_ddetr.backbone,
    neck=_ddetr.neck,
    # Official DINO: temperature 20 and positions not shifted to pixel centres (offset 0).
    position_embedding=L(PositionEmbeddingSine)(
        embed_dim="${..transformer.d_model}", temperature=20, normalize=True, offset=0.0
    ),
    transformer=L(DINOTransformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.0,
        activation="relu",
        num_feature_levels=4,
        enc_n_points=4,
        dec_n_points=4,
        num_queries="${..num_queries}",
        num_classes="${..num_classes}",
        mixed_selection="${..mixed_selection}",
        look_forward_twice="${..look_forward_twice}",
    ),
    num_classes=80,
    num_queries=900,
    criterion=L(DINOCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type="focal_loss_cost", alpha=0.25, gamma=2.0),
        # Base weights of every stage: final, auxiliary, encoder, denoising.
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    aux_loss=True,
    dn_number=100,
    label_noise_ratio=0.5,
    box_noise_scale=1.0,
    mixed_selection=True,
    look_forward_twice=True,
    share_heads=True,
    # The official DINO evaluation keeps 300 detections per image.
    select_box_nums_for_evaluation=300,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    batch_invariant_inference=True,
)
