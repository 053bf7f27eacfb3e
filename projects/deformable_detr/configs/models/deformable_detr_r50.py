# Deformable DETR, ResNet-50, multi-scale (4 levels: C3-C5 + one stride-64 level), one-stage.
# Paper settings (Zhu et al. 2021, Sec. 5): M=8 heads, L=4 levels, K=4 points, 6+6 layers,
# d=256, FFN 1024, dropout 0.1, 300 queries, focal loss, costs/weights class 2, L1 5, GIoU 2.
from detectron2.config import LazyCall as L

from detrex_lite.layers import PositionEmbeddingSine
from detrex_lite.modeling import ChannelMapper, HungarianMatcher, SetCriterion, build_resnet, resnet_output_shape
from projects.deformable_detr.modeling import DeformableDETR, DeformableTransformer

model = L(DeformableDETR)(
    backbone=L(build_resnet)(
        depth=50,
        out_features=["res3", "res4", "res5"],
        # Official: the stem and res2 stay frozen (only layer2-4 train), FrozenBN everywhere.
        freeze_at=2,
        norm="FrozenBN",
        stride_in_1x1=False,  # torchvision weights
        res5_dilation=1,
        stem_out_channels=64,
    ),
    neck=L(ChannelMapper)(
        # The backbone's output_shape() (res3/4/5: 512/1024/2048 channels, strides 8/16/32),
        # computed from its fields without building it: change the backbone, the neck follows.
        input_shapes=L(resnet_output_shape)(
            depth="${...backbone.depth}",
            out_features="${...backbone.out_features}",
            res5_dilation="${...backbone.res5_dilation}",
            stem_out_channels="${...backbone.stem_out_channels}",
        ),
        in_features="${..backbone.out_features}",
        out_channels="${..transformer.d_model}",
        num_outs="${..transformer.num_feature_levels}",
        kernel_size=1,
        norm="GN",
        num_groups=32,
    ),
    # d_model channels (128 per axis); offset -0.5 (pixel centres) as the official code.
    position_embedding=L(PositionEmbeddingSine)(
        embed_dim="${..transformer.d_model}", temperature=10000, normalize=True, offset=-0.5
    ),
    transformer=L(DeformableTransformer)(
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        activation="relu",
        num_feature_levels=4,
        enc_n_points=4,
        dec_n_points=4,
        two_stage="${..as_two_stage}",
        two_stage_num_proposals="${..num_queries}",
    ),
    num_classes=80,
    num_queries=300,
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, cost_class_type="focal_loss_cost", alpha=0.25, gamma=2.0),
        # Base weights, applied to the final, every auxiliary and the encoder stage.
        weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    aux_loss=True,
    with_box_refine=False,
    as_two_stage=False,
    # The paper's evaluation protocol keeps 100 detections per image (detrex uses 300).
    select_box_nums_for_evaluation=100,
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    batch_invariant_inference=True,
)
