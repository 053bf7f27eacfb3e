"""Tiny Deformable DETR variants: training step, inference outputs, batch invariance, naming."""
import collections
import copy
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances

from detrex_lite.layers import LevelLayout, PositionEmbeddingSine
from detrex_lite.modeling import ChannelMapper, HungarianMatcher, SetCriterion, build_resnet
from projects.deformable_detr.modeling import DeformableDETR, DeformableTransformer
from projects.deformable_detr.modeling import DeformableTransformerEncoder, box_from_delta

NUM_CLASSES = 3
D = 32

# name -> (multi_scale, dc5, with_box_refine, as_two_stage): the paper's five rows.
VARIANTS = {
    "single_scale": (False, False, False, False),
    "single_scale_dc5": (False, True, False, False),
    "multi_scale": (True, False, False, False),
    "box_refinement": (True, False, True, False),
    "two_stage": (True, False, True, True),
}


def tiny_model(multi_scale=True, dc5=False, with_box_refine=False, as_two_stage=False, **kwargs):
    torch.manual_seed(0)
    out_features = ["res3", "res4", "res5"] if multi_scale else ["res5"]
    backbone = build_resnet(
        depth=50 if dc5 else 18, stem_out_channels=8, freeze_at=0, norm="FrozenBN",
        out_features=out_features, res5_dilation=2 if dc5 else 1,
    )
    levels = 4 if multi_scale else 1
    neck = ChannelMapper(backbone.output_shape(), in_features=out_features, out_channels=D, num_outs=levels, num_groups=8)
    transformer = DeformableTransformer(
        d_model=D, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=64,
        num_feature_levels=levels, enc_n_points=2, dec_n_points=2, two_stage=as_two_stage, two_stage_num_proposals=8,
    )
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(2.0, 5.0, 2.0))
    return DeformableDETR(
        backbone=backbone, neck=neck, position_embedding=PositionEmbeddingSine(D), transformer=transformer,
        num_classes=NUM_CLASSES, criterion=criterion, num_queries=8, with_box_refine=with_box_refine,
        as_two_stage=as_two_stage, select_box_nums_for_evaluation=12, **kwargs,
    )


def make_inputs(n, seed=0):
    """n images of different sizes (so a batch is padded), scaled 1.5x back to "original" size."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(n):
        h, w = 64 + 9 * i, 88 - 7 * i
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        inputs.append({"image": image, "height": int(h * 1.5), "width": int(w * 1.5), "instances": inst, "image_id": i})
    return inputs


def _perturb_heads(model):
    """Random box/class heads so that predictions depend on the image (the zero-initialised
    last box layer would make every box equal its reference point)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("bbox_embed", "class_embed")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_train_step_gives_gradients_to_all_parameters(variant):
    model = tiny_model(*VARIANTS[variant])
    model.train()
    losses = model(make_inputs(2))
    num_layers = model.transformer.decoder.num_layers
    suffixes = [""] + [f"_{i}" for i in range(num_layers - 1)] + (["_enc"] if model.as_two_stage else [])
    assert set(losses) == {b + s for b in ("loss_class", "loss_bbox", "loss_giou") for s in suffixes}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert missing == []
    # The heads and the deformable attention really learn something.
    assert model.class_embed[0].weight.grad.abs().sum() > 0
    assert model.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def _batched_and_single(model):
    """Perturbs the heads, then predicts 4 images (make_inputs seed 1) in eval mode as one batch
    and one image at a time. Returns (inputs, batched outputs, per-image outputs)."""
    _perturb_heads(model)
    model.eval()
    inputs = make_inputs(4, seed=1)
    with torch.no_grad():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    return inputs, batched, single


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inference_outputs_and_batch_invariance(variant):
    model = tiny_model(*VARIANTS[variant])
    inputs, batched, single = _batched_and_single(model)
    assert len(batched) == 4
    for x, b, s in zip(inputs, batched, single):
        inst = b["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert 0 < len(inst) <= 12
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= x["width"]).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= x["height"]).all()
        # Batch 4 (padded) == batch 1 (unpadded), detection by detection.
        ref = s["instances"]
        assert len(ref) == len(inst)
        torch.testing.assert_close(inst.scores, ref.scores, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(inst.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-3, rtol=1e-4)
        assert torch.equal(inst.pred_classes, ref.pred_classes)


def test_batch_invariance_flag_matters():
    # Without per-image backbone/neck, padding changes GroupNorm statistics and border features:
    # the test above would fail. This guards that it is not vacuous.
    model = tiny_model(batch_invariant_inference=False)
    _, batched, single = _batched_and_single(model)
    diff = max((b["instances"].scores - s["instances"].scores).abs().max().item() for b, s in zip(batched[1:], single[1:]))
    assert diff > 1e-4


def test_official_parameter_names():
    names = set(tiny_model(True, False, True, True).state_dict()) | set(tiny_model().state_dict())
    expected = [
        "backbone.stem.conv1.weight",
        "neck.input_proj.0.0.weight", "neck.input_proj.0.1.weight", "neck.input_proj.3.0.weight",
        "transformer.level_embed",
        "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
        "transformer.encoder.layers.0.self_attn.attention_weights.weight",
        "transformer.encoder.layers.0.self_attn.value_proj.weight",
        "transformer.encoder.layers.0.self_attn.output_proj.weight",
        "transformer.encoder.layers.0.norm1.weight", "transformer.encoder.layers.0.linear1.weight",
        "transformer.encoder.layers.0.linear2.weight", "transformer.encoder.layers.0.norm2.weight",
        "transformer.decoder.layers.1.cross_attn.sampling_offsets.weight",
        "transformer.decoder.layers.1.self_attn.in_proj_weight",
        "transformer.decoder.layers.1.self_attn.out_proj.weight",
        "transformer.decoder.layers.1.norm3.weight",
        "transformer.reference_points.weight",
        "transformer.enc_output.weight", "transformer.enc_output_norm.weight",
        "transformer.pos_trans.weight", "transformer.pos_trans_norm.weight",
        "class_embed.0.weight", "class_embed.2.bias", "bbox_embed.2.layers.2.weight",
        "query_embed.weight",
    ]
    assert [n for n in expected if n not in names] == []


def test_official_initialisation():
    prior_bias = -math.log((1 - 0.01) / 0.01)
    one_stage = tiny_model()
    assert torch.allclose(one_stage.class_embed[0].bias, torch.full((NUM_CLASSES,), prior_bias))
    last = one_stage.bbox_embed[0].layers[-1]
    assert torch.equal(last.weight, torch.zeros_like(last.weight))
    assert torch.equal(last.bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    # Without refinement the heads are shared by all decoder layers (official).
    assert one_stage.class_embed[0] is one_stage.class_embed[1]
    refine = tiny_model(with_box_refine=True)
    assert refine.class_embed[0] is not refine.class_embed[1]
    assert torch.equal(refine.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert torch.equal(refine.bbox_embed[1].layers[-1].bias, torch.zeros(4))
    two_stage = tiny_model(with_box_refine=True, as_two_stage=True)
    assert len(two_stage.class_embed) == 3  # 2 decoder layers + the proposal head
    assert all(torch.equal(h.layers[-1].bias, torch.zeros(4)) for h in two_stage.bbox_embed)


def test_encoder_reference_points_match_official_formula():
    spatial_shapes = torch.tensor([[6, 8], [3, 4]])
    valid = torch.tensor([[[8.0, 5.0], [4.0, 3.0]], [[6.0, 6.0], [3.0, 3.0]]])  # (N, L, (w, h))
    got = DeformableTransformerEncoder.get_reference_points(LevelLayout.from_sizes([(6, 8), (3, 4)], "cpu"), valid)
    ratios = valid / spatial_shapes.flip(-1)[None].float()
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        ref_y = ys.reshape(-1)[None] / (ratios[:, None, lvl, 1] * h)
        ref_x = xs.reshape(-1)[None] / (ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    official = torch.cat(refs, 1)[:, :, None] * ratios[:, None]
    torch.testing.assert_close(got, official, atol=1e-6, rtol=1e-6)


def test_box_refinement_moves_references_and_one_stage_does_not():
    for refine in (False, True):
        model = tiny_model(with_box_refine=refine)
        _perturb_heads(model)
        model.eval()
        images = model.preprocess_image(make_inputs(1))
        features, masks = model.extract_features(images)
        pos = [model.position_embedding(m) for m in masks]
        with torch.no_grad():
            out = model.transformer(
                features, masks, pos, model.query_embed.weight, bbox_embed=model.bbox_embed, refine=refine
            )
        assert out.hs.shape == (2, 1, 8, D) and out.boxes.shape == (2, 1, 8, 4)
        # Each layer's boxes are its box head relative to its reference.
        for layer, (hs, ref) in enumerate(zip(out.hs, out.references)):
            torch.testing.assert_close(out.boxes[layer], box_from_delta(model.bbox_embed[layer](hs), ref))
        if refine:  # layer 1 starts from layer 0's boxes
            assert torch.equal(out.references[1], out.boxes[0])
            assert not torch.allclose(out.references[1][..., :2], out.references[0])
        else:
            assert torch.equal(out.references[1], out.references[0])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_heads_run_once_and_eval_computes_only_the_last_layer(variant):
    """Training: a class and a box head once per decoder layer (+ the proposal heads on every
    token for two-stage); eval: one class head (the last layer's), box heads only where they
    refine references or give the last boxes, and for two-stage the proposal box head only on
    the selected tokens (the proposal class head not at all: objectness is one of its rows)."""
    model = tiny_model(*VARIANTS[variant])
    calls = collections.Counter()
    for kind in ("class_embed", "bbox_embed"):
        for head in {id(m): m for m in getattr(model, kind)}.values():  # shared heads: hook once
            head.register_forward_hook(lambda m, args, out, kind=kind: calls.update([(kind, args[0].shape[1])]))
    layers, queries, refine = model.transformer.decoder.num_layers, model.num_queries, model.with_box_refine
    inputs = make_inputs(2)
    tokens = None
    if model.as_two_stage:
        features, _ = model.extract_features(model.preprocess_image(inputs))
        tokens = sum(f.shape[-2] * f.shape[-1] for f in features)

    model.train()
    model(inputs)
    expected = collections.Counter({("class_embed", queries): layers, ("bbox_embed", queries): layers})
    if model.as_two_stage:
        expected.update([("class_embed", tokens), ("bbox_embed", tokens)])
    assert calls == expected
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(inputs)
    expected = collections.Counter({("class_embed", queries): 1, ("bbox_embed", queries): layers if refine else 1})
    if model.as_two_stage:
        expected.update([("bbox_embed", queries)])  # the proposal box head on the selected tokens
    assert calls == expected


def test_feature_masks_are_exact():
    model = tiny_model()
    images = model.preprocess_image(make_inputs(3))
    features, masks = model.extract_features(images)
    for feat, mask, stride in zip(features, masks, model.feature_strides):
        assert mask.shape == (3,) + feat.shape[-2:]
        for i, (h, w) in enumerate(images.image_sizes):
            valid = (~mask[i]).nonzero()
            assert valid[:, 0].max().item() + 1 == math.ceil(h / stride)
            assert valid[:, 1].max().item() + 1 == math.ceil(w / stride)
            assert (~mask[i]).sum().item() == math.ceil(h / stride) * math.ceil(w / stride)


def test_bad_combinations_raise():
    with pytest.raises(ValueError, match="num_feature_levels"):
        backbone = build_resnet(depth=18, stem_out_channels=8, out_features=["res5"])
        neck = ChannelMapper(backbone.output_shape(), in_features=["res5"], out_channels=D, num_outs=1, num_groups=8)
        DeformableDETR(
            backbone=backbone, neck=neck, position_embedding=PositionEmbeddingSine(D),
            transformer=DeformableTransformer(d_model=D, nhead=4, num_feature_levels=4),
            num_classes=3, criterion=SetCriterion(3, HungarianMatcher()),
        )
