# DETR, ResNet-50 (Carion et al. 2020, Sec. 4 and A.4): C5 features through a 1x1 projection,
# 6 + 6 post-norm transformer layers, d=256, FFN 2048, 8 heads, dropout 0.1, 100 queries, sine
# position embedding, softmax classifier with a no-object class (weight 0.1), aux losses;
# matching costs and loss weights: class 1, L1 5, GIoU 2.
from detectron2.config import LazyCall as L

from detrex_lite.layers import PositionEmbeddingSine
from detrex_lite.modeling import HungarianMatcher, SetCriterion, build_resnet
from projects.detr.modeling import DETR, DetrTransformer

model = L(DETR)(
    backbone=L(build_resnet)(
        depth=50,
        out_features=["res5"],
        # Official: the stem and res2 stay frozen (only layer2-4 train), FrozenBN everywhere.
        freeze_at=2,
        norm="FrozenBN",
        stride_in_1x1=False,  # torchvision weights
        res5_dilation=1,  # 2 in the DC5 variants
        stem_out_channels=64,
    ),
    in_feature="res5",
    # d_model channels (128 per axis); normalised positions with offset 0, as the official DETR.
    position_embedding=L(PositionEmbeddingSine)(
        embed_dim="${..transformer.d_model}", temperature=10000, normalize=True, offset=0.0
    ),
    transformer=L(DetrTransformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
    ),
    num_classes=80,
    num_queries=100,
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type="ce_cost"),
        # Base weights, applied to the final and every auxiliary decoder stage.
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        loss_class_type="ce_loss",
        eos_coef=0.1,  # relative weight of the no-object class
    ),
    aux_loss=True,
    # One detection per query, as the official post-processing (100 queries -> 100 boxes).
    select_box_nums_for_evaluation=100,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    batch_invariant_inference=True,
)
