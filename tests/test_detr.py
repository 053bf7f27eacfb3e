"""DETR: training outputs, the inference contract and the official post-processing, on a tiny
model built from the shipped model config."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from torchvision.ops import generalized_box_iou

from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy
from projects.detr.modeling import DETR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG = os.path.join(REPO, "projects/detr/configs/models/detr_r50.py")
NUM_CLASSES = 5
NUM_QUERIES = 12


def tiny_detr(num_decoder_layers=2, aux_loss=True, topk=8, **model_overrides) -> DETR:
    """The shipped DETR model config at toy size: ResNet-18 at 1/8 width, d=32."""
    cfg = LazyConfig.load(MODEL_CONFIG).model
    cfg.backbone.depth = 18
    cfg.backbone.stem_out_channels = 8
    cfg.backbone.freeze_at = 0
    t = cfg.transformer
    t.d_model, t.nhead, t.dim_feedforward = 32, 4, 64
    t.num_encoder_layers, t.num_decoder_layers, t.dropout = 1, num_decoder_layers, 0.0
    cfg.num_classes = NUM_CLASSES
    cfg.num_queries = NUM_QUERIES
    cfg.aux_loss = aux_loss
    cfg.select_box_nums_for_evaluation = topk
    for k, v in model_overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return instantiate(cfg)


def _input(h, w, boxes, classes, orig=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    orig_h, orig_w = orig or (h, w)
    return {
        "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
        "height": orig_h,
        "width": orig_w,
        "instances": inst,
    }


def _batch():
    return [
        _input(64, 96, [[4, 6, 40, 50], [50, 10, 90, 60]], [1, 3], orig=(128, 192), seed=1),
        _input(80, 48, [], [], orig=(100, 60), seed=2),  # an image without objects
        _input(72, 72, [[10, 10, 70, 30]], [4], seed=3),
    ]


def test_training_losses_and_gradients():
    model = tiny_detr(num_decoder_layers=3).train()
    losses = model(_batch())
    base = {"loss_class", "loss_bbox", "loss_giou"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in range(2)}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # freeze_at=0: everything trains
    assert [n for n, p in trainable if p.grad is None] == []
    # As in the official DETR, the first decoder self-attention sees tgt = 0 for every query:
    # its values are all equal (the zero-initialised bias), so the q/k/v projection gets no
    # gradient, and with the zero-initialised biases neither do out_proj.weight and norm1.weight
    # at the first step. Every other parameter must get a gradient.
    zero = {n for n, p in trainable if not p.grad.abs().sum() > 0}
    first = "transformer.decoder.layers.0."
    assert zero == {first + "self_attn.in_proj_weight", first + "self_attn.out_proj.weight", first + "norm1.weight"}


def test_loss_keys_without_aux_loss():
    model = tiny_detr(aux_loss=False).train()
    assert set(model(_batch())) == {"loss_class", "loss_bbox", "loss_giou"}


def test_losses_are_weighted_as_the_paper():
    """The final-stage losses equal class 1 x CE (no-object weight 0.1) + 5 x L1 + 2 x GIoU
    computed by hand on the model's own (matched) predictions."""
    model = tiny_detr(num_decoder_layers=1).train()
    captured = {}
    model.class_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o[-1]))
    model.bbox_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("boxes", o[-1].sigmoid()))
    batch = _batch()
    losses = model(batch)
    targets = model.prepare_targets(batch)
    outputs = {"pred_logits": captured["logits"], "pred_boxes": captured["boxes"]}
    indices = model.criterion.matcher(outputs, targets)

    logits, boxes = captured["logits"].detach(), captured["boxes"].detach()
    target_classes = torch.full(logits.shape[:2], NUM_CLASSES, dtype=torch.int64)
    matched_src, matched_tgt = [], []
    for b, (qi, ti) in enumerate(indices):
        target_classes[b, qi] = targets[b]["labels"][ti]
        matched_src.append(boxes[b, qi])
        matched_tgt.append(targets[b]["boxes"][ti])
    # Weighted mean cross-entropy: weight 1 for real classes, 0.1 for no-object (official).
    logp = logits.log_softmax(-1)
    weights = torch.where(target_classes == NUM_CLASSES, 0.1, 1.0)
    nll = -logp.gather(-1, target_classes[..., None])[..., 0]
    expected_ce = (weights * nll).sum() / weights.sum()
    src, tgt = torch.cat(matched_src), torch.cat(matched_tgt)
    num_boxes = len(tgt)
    expected_l1 = (src - tgt).abs().sum() / num_boxes
    giou = generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)).diag()
    expected_giou = (1 - giou).sum() / num_boxes
    torch.testing.assert_close(losses["loss_class"].detach(), 1.0 * expected_ce)
    torch.testing.assert_close(losses["loss_bbox"].detach(), 5.0 * expected_l1)
    torch.testing.assert_close(losses["loss_giou"].detach(), 2.0 * expected_giou)


def test_inference_contract_and_official_postprocessing():
    model = tiny_detr(topk=8).eval()
    captured = {}
    model.class_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("logits", o[-1]))
    model.bbox_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("boxes", o[-1].sigmoid()))
    batch = _batch()
    with torch.no_grad():
        results = model(batch[:1])
    assert len(results) == 1
    inst = results[0]["instances"]
    assert inst.image_size == (128, 192)  # the original size, not the resized input
    assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
    assert len(inst) == 8  # 12 queries -> top 8, at most one box per query
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    assert inst.pred_classes.dtype == torch.int64
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES)).all()

    # Reference: the official DETR PostProcess (softmax, drop no-object, max per query, boxes
    # scaled to the original size), then sorted, top 8, clipped to the image.
    prob = captured["logits"][0].softmax(-1)[:, :-1]
    scores, labels = prob.max(-1)
    boxes = box_cxcywh_to_xyxy(captured["boxes"][0]) * torch.tensor([192.0, 128.0, 192.0, 128.0])
    order = scores.argsort(descending=True)[:8]
    boxes = boxes[order]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 192)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 128)
    torch.testing.assert_close(inst.scores, scores[order])
    assert torch.equal(inst.pred_classes, labels[order])
    torch.testing.assert_close(inst.pred_boxes.tensor, boxes, rtol=1e-5, atol=1e-4)


def test_no_object_probability_is_excluded_not_renormalised():
    model = tiny_detr(topk=NUM_QUERIES).eval()
    with torch.no_grad():
        model.class_embed.weight.zero_()
        model.class_embed.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 5.0]))  # last: no-object
        results = model(_batch()[:1])
    inst = results[0]["instances"]
    e = torch.tensor(1.0).exp()
    expected = e**3 / (4 + e**3 + e**5)  # softmax over K + 1, no-object kept in the denominator
    assert len(inst) == NUM_QUERIES
    assert (inst.pred_classes == 2).all()
    torch.testing.assert_close(inst.scores, expected.expand(NUM_QUERIES))


def test_batched_inference_equals_one_image_at_a_time():
    model = tiny_detr(topk=NUM_QUERIES).eval()
    batch = _batch()
    with torch.no_grad():
        together = model(batch)
        alone = [model([x])[0] for x in batch]
    for a, b in zip(together, alone):
        a, b = a["instances"], b["instances"]
        assert a.image_size == b.image_size
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
        assert torch.equal(a.pred_classes, b.pred_classes)


def test_official_parameter_names():
    model = tiny_detr(num_decoder_layers=1)
    names = {k for k in model.state_dict() if not k.startswith("backbone.")}
    heads = {"input_proj.weight", "input_proj.bias", "query_embed.weight", "class_embed.weight", "class_embed.bias"}
    heads |= {f"bbox_embed.layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert heads <= names
    assert {k for k in names - heads if not k.startswith("transformer.")} == set()
    assert "transformer.decoder.norm.weight" in names and "transformer.encoder.layers.0.linear1.weight" in names
    assert model.class_embed.out_features == NUM_CLASSES + 1
    assert model.input_proj.kernel_size == (1, 1)
    # Exactly the backbone's parameters carry "backbone" (the optimizer's 0.1 lr group).
    assert all(n.startswith("backbone.") for n, _ in model.named_parameters() if "backbone" in n)


def test_rejects_a_focal_criterion():
    cfg = LazyConfig.load(MODEL_CONFIG).model
    cfg.criterion.loss_class_type = "focal_loss"
    cfg.backbone.depth, cfg.backbone.stem_out_channels = 18, 8
    with pytest.raises(ValueError, match="ce_loss"):
        instantiate(cfg)
