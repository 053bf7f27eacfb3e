"""Parity with Hugging Face transformers: tiny random DeformableDetrForObjectDetection /
DetrForObjectDetection models (their backbones included) are converted through the official
names into this project's models, which must then predict the same logits and boxes (1e-4) on
the same input."""
import pytest
import torch
from detectron2.structures import ImageList

transformers = pytest.importorskip("transformers")

from detrex_lite.checkpoint import convert_state_dict, load_model_state  # noqa: E402
from detrex_lite.checkpoint.class_heads import coco_contiguous_to_id  # noqa: E402
from detrex_lite.layers import PositionEmbeddingSine  # noqa: E402
from detrex_lite.modeling import ChannelMapper, HungarianMatcher, SetCriterion  # noqa: E402
from projects.deformable_detr.checkpoint import hf_to_official_deformable_detr  # noqa: E402
from projects.detr.checkpoint import hf_to_official_detr  # noqa: E402
from hf_tiny_variants import BACKBONE, DEFORMABLE_VARIANTS  # noqa: E402
from random_weights import randomize  # noqa: E402,F401  (also used by test_convert_check_config)
from test_convert_resnet import d2_resnet_like_hf  # noqa: E402

D_MODEL, HEADS, FFN, QUERIES = 32, 2, 64, 10
TOL = dict(rtol=0, atol=1e-4)


def _input(seed=1, h=64, w=96):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _our_outputs(model, pixels):
    images = ImageList(pixels, [tuple(pixels.shape[-2:])] * pixels.shape[0])
    with torch.no_grad():
        features, masks = model.extract_features(images)
        return model.forward_heads(features, masks)


# ---------------------------------------------------------------------------------------------
# Deformable DETR
# ---------------------------------------------------------------------------------------------
def _hf_deformable(num_labels, num_feature_levels=4, with_box_refine=False, two_stage=False):
    out_features = ["stage2", "stage3", "stage4"] if num_feature_levels > 1 else ["stage4"]
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=out_features, **BACKBONE),
        use_timm_backbone=False, d_model=D_MODEL, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        num_queries=QUERIES, two_stage_num_proposals=QUERIES, num_labels=num_labels,
        num_feature_levels=num_feature_levels, with_box_refine=with_box_refine, two_stage=two_stage,
        dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config)
    randomize(model)
    return model.eval()


def _our_deformable(num_classes, num_feature_levels=4, with_box_refine=False, two_stage=False):
    from projects.deformable_detr.modeling import DeformableDETR, DeformableTransformer

    hf_backbone = transformers.ResNetConfig(**BACKBONE)
    in_features = ["res3", "res4", "res5"] if num_feature_levels > 1 else ["res5"]
    backbone = d2_resnet_like_hf(hf_backbone, in_features)
    neck = ChannelMapper(
        input_shapes=backbone.output_shape(), in_features=in_features, out_channels=D_MODEL,
        num_outs=num_feature_levels, kernel_size=1, norm="GN", num_groups=32,
    )
    transformer = DeformableTransformer(
        d_model=D_MODEL, nhead=HEADS, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=FFN,
        dropout=0.0, num_feature_levels=num_feature_levels, two_stage=two_stage, two_stage_num_proposals=QUERIES,
    )
    model = DeformableDETR(
        backbone=backbone, neck=neck,
        position_embedding=PositionEmbeddingSine(embed_dim=D_MODEL, normalize=True, offset=-0.5),
        transformer=transformer, num_classes=num_classes,
        criterion=SetCriterion(num_classes=num_classes, matcher=HungarianMatcher()),
        num_queries=QUERIES, with_box_refine=with_box_refine, as_two_stage=two_stage,
    )
    return model.eval()


@pytest.mark.parametrize("variant", list(DEFORMABLE_VARIANTS))
def test_deformable_detr_matches_hf(variant):
    kwargs = DEFORMABLE_VARIANTS[variant]
    hf = _hf_deformable(num_labels=7, **kwargs)
    ours = _our_deformable(num_classes=7, **kwargs)
    converted, meta = convert_state_dict(hf.state_dict())
    assert meta == {"source": "hf", "architecture": "deformable_detr"}
    load_model_state(ours, converted, strict=True)  # raises on any missing/unexpected/shape

    pixels = _input()
    with torch.no_grad():
        ref = hf(pixel_values=pixels, pixel_mask=torch.ones(1, *pixels.shape[-2:], dtype=torch.long))
    out = _our_outputs(ours, pixels)
    torch.testing.assert_close(out["pred_logits"], ref.logits, **TOL)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, **TOL)
    if kwargs.get("two_stage"):
        # The proposal logits of every token are computed for the encoder loss (training mode;
        # no dropout in these models), not in eval.
        assert "enc_outputs" not in out
        enc = _our_outputs(ours.train(), pixels)["enc_outputs"]
        ours.eval()
        torch.testing.assert_close(enc["pred_logits"], ref.enc_outputs_class, **TOL)

    # the official key layout converts to the same weights
    from_official, meta = convert_state_dict(hf_to_official_deformable_detr(hf.state_dict()))
    assert meta["source"] == "official-deformable-detr"
    assert set(from_official) == set(converted)
    assert all(torch.equal(from_official[k], converted[k]) for k in converted)


@pytest.mark.parametrize("variant", ["multi_scale", "two_stage"])
def test_deformable_detr_coco_class_mapping(variant):
    """91 COCO-id logits -> 80 contiguous classes: each kept class has exactly its logit."""
    kwargs = DEFORMABLE_VARIANTS[variant]
    hf = _hf_deformable(num_labels=91, **kwargs)
    ours = _our_deformable(num_classes=80, **kwargs)
    load_model_state(ours, convert_state_dict(hf.state_dict())[0], strict=True)
    pixels = _input(seed=2)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, pixel_mask=torch.ones(1, *pixels.shape[-2:], dtype=torch.long))
    out = _our_outputs(ours, pixels)
    ids = coco_contiguous_to_id()
    torch.testing.assert_close(out["pred_logits"], ref.logits[..., ids], **TOL)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, **TOL)


# ---------------------------------------------------------------------------------------------
# DETR
# ---------------------------------------------------------------------------------------------
def _hf_detr(num_labels):
    config = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage4"], **BACKBONE),
        use_timm_backbone=False, d_model=D_MODEL, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        num_queries=QUERIES, num_labels=num_labels, dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.DetrForObjectDetection(config)
    randomize(model)
    return model.eval()


def _our_detr(num_classes):
    from projects.detr.modeling import DETR, DetrTransformer

    backbone = d2_resnet_like_hf(transformers.ResNetConfig(**BACKBONE), ["res5"])
    return DETR(
        backbone=backbone,
        position_embedding=PositionEmbeddingSine(embed_dim=D_MODEL, normalize=True, offset=0.0),
        transformer=DetrTransformer(
            d_model=D_MODEL, nhead=HEADS, dim_feedforward=FFN, dropout=0.0, num_encoder_layers=1, num_decoder_layers=2
        ),
        num_classes=num_classes,
        criterion=SetCriterion(
            num_classes=num_classes, matcher=HungarianMatcher(cost_class_type="ce_cost"), loss_class_type="ce_loss"
        ),
        num_queries=QUERIES,
    ).eval()


@pytest.mark.parametrize("num_labels,num_classes", [(6, 6), (91, 80)])
def test_detr_matches_hf(num_labels, num_classes):
    hf = _hf_detr(num_labels)
    ours = _our_detr(num_classes)
    converted, meta = convert_state_dict(hf.state_dict())
    assert meta == {"source": "hf", "architecture": "detr"}
    load_model_state(ours, converted, strict=True)

    pixels = _input(seed=3)
    with torch.no_grad():
        ref = hf(pixel_values=pixels, pixel_mask=torch.ones(1, *pixels.shape[-2:], dtype=torch.long))
    out = _our_outputs(ours, pixels)
    # COCO: 91 id logits + no-object -> 80 contiguous + no-object (still last)
    rows = coco_contiguous_to_id() + [num_labels] if num_labels == 91 else list(range(num_labels + 1))
    torch.testing.assert_close(out["pred_logits"], ref.logits[..., rows], **TOL)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, **TOL)

    from_official, meta = convert_state_dict(hf_to_official_detr(hf.state_dict()))
    assert meta["source"] == "official-detr"
    assert all(torch.equal(from_official[k], converted[k]) for k in converted)
