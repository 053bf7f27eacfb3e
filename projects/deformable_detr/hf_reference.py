"""Hugging Face transformers' ``DeformableDetrForObjectDetection`` with a config's architecture:
the reference implementation ``tools/benchmark.py --compare-hf`` times beside ours (reached through
the model hook ``DeformableDETR.transformers_reference``). transformers is imported on use."""
import torch

__all__ = ["hf_config_from", "transformers_model"]


def hf_config_from(model_cfg, num_classes: int):
    """A ``transformers.DeformableDetrConfig`` with the architecture of ``model_cfg`` (``cfg.model``).

    Same d_model, layers, heads, FFN width, dropout, activation, levels, points, queries,
    two-stage / box-refinement / auxiliary-loss flags, matcher costs and loss weights; the backbone
    is HF's own ResNet (``ResNetConfig``: same depth, widths and stem, stride in the 3x3 conv like
    ``stride_in_1x1=False``) with ``use_timm_backbone=False`` and ``use_pretrained_backbone=False``.
    """
    import transformers

    # The blocks per ResNet stage for a depth: build_resnet's own table. No public accessor gives
    # them without building the network (resnet_output_shape has channels and strides only), so
    # this adapter is the one place outside the backbone that reads it.
    from detrex_lite.modeling.backbone import _BLOCKS_PER_STAGE

    m = model_cfg
    backbone, t = m.backbone, m.transformer
    if backbone.get("res5_dilation", 1) != 1 or backbone.get("stride_in_1x1", False):
        raise ValueError("--compare-hf: HF's ResNet backbone has no DC5 / stride_in_1x1=True variant")
    depth, stem = backbone.depth, backbone.get("stem_out_channels", 64)
    bottleneck = depth >= 50
    out_features = [f"stage{int(name[3:]) - 1}" for name in backbone.out_features]  # res3 -> stage2
    backbone_config = transformers.ResNetConfig(
        embedding_size=stem,
        hidden_sizes=[stem * (4 if bottleneck else 1) * 2**i for i in range(4)],
        depths=list(_BLOCKS_PER_STAGE[depth]),
        layer_type="bottleneck" if bottleneck else "basic",
        downsample_in_bottleneck=False,
        out_features=out_features,
    )
    criterion = m.get("criterion", {})
    matcher = criterion.get("matcher", {})
    weights = criterion.get("weight_dict", {})
    return transformers.DeformableDetrConfig(
        backbone_config=backbone_config,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=t.d_model,
        encoder_layers=t.num_encoder_layers,
        decoder_layers=t.num_decoder_layers,
        encoder_attention_heads=t.nhead,
        decoder_attention_heads=t.nhead,
        encoder_ffn_dim=t.dim_feedforward,
        decoder_ffn_dim=t.dim_feedforward,
        dropout=t.dropout,
        activation_function=t.get("activation", "relu"),
        num_feature_levels=t.num_feature_levels,
        encoder_n_points=t.enc_n_points,
        decoder_n_points=t.dec_n_points,
        num_queries=m.num_queries,
        two_stage=bool(m.as_two_stage),
        two_stage_num_proposals=m.num_queries,
        with_box_refine=bool(m.with_box_refine),
        auxiliary_loss=bool(m.aux_loss),
        num_labels=num_classes,
        # HF types these as int (its strict config refuses 2.0); they do not change the speed.
        class_cost=_int_if_whole(matcher.get("cost_class", 2)),
        bbox_cost=_int_if_whole(matcher.get("cost_bbox", 5)),
        giou_cost=_int_if_whole(matcher.get("cost_giou", 2)),
        bbox_loss_coefficient=_int_if_whole(weights.get("loss_bbox", 5)),
        giou_loss_coefficient=_int_if_whole(weights.get("loss_giou", 2)),
        focal_alpha=float(criterion.get("alpha", 0.25)),
    )


def _int_if_whole(x):
    return int(x) if float(x).is_integer() else float(x)


def transformers_model(model_cfg, num_classes: int) -> torch.nn.Module:
    """``DeformableDetrForObjectDetection`` (random initialisation) with ``model_cfg``'s architecture."""
    import transformers

    return transformers.DeformableDetrForObjectDetection(hf_config_from(model_cfg, num_classes))
