"""DINO's three ideas checked by what they must do, not by how the code does it: no information
flows from denoising queries into matching queries or between groups; the noise respects its
bounds and the label-flip rate; the Hungarian matcher never sees denoising queries; look forward
twice trains the previous layer's box head through the current layer's loss while the references
stay detached; with the switches off the model is two-stage Deformable DETR with box refinement."""
import math

import pytest
import torch
from detectron2.config import instantiate

from detrex_lite.modeling import HungarianMatcher
from projects.deformable_detr.modeling import DeformableTransformerDecoderLayer, DeformableTransformerEncoder
from projects.dino.modeling import denoising
from tests.dino_tiny_model import random_inputs, tiny_dino_config
from tests.tools_tiny_models import tiny_deformable_detr_config

SIZES = [(72, 88, 3), (64, 96, 5), (80, 64, 1)]


def _model(**kwargs):
    torch.manual_seed(0)
    return instantiate(tiny_dino_config(**kwargs).model)


def _features(model, inputs):
    images = model.preprocess_image(inputs)
    features, masks = model.extract_features(images)
    pos = [model.position_embedding(m) for m in masks]
    return features, masks, pos


def _leaf_denoising(model, targets, seed=0):
    """Denoising queries whose content and boxes are leaves that require grad."""
    torch.manual_seed(seed)
    dn = denoising.build_denoising_queries(
        targets, dn_number=model.dn_number, label_noise_ratio=0.5, box_noise_scale=1.0,
        num_classes=model.num_classes, num_queries=model.num_queries, label_enc=model.label_enc,
    )
    return dn._replace(content=dn.content.detach().requires_grad_(), boxes=dn.boxes.detach().requires_grad_())


# ---- contrastive denoising: the attention mask --------------------------------------------
def test_attention_mask_layout():
    mask = denoising.denoising_attention_mask(num_groups=3, group_size=4, num_queries=5)
    assert mask.shape == (17, 17) and mask.dtype == torch.bool
    group = [0] * 4 + [1] * 4 + [2] * 4 + [None] * 5
    for i in range(17):
        for j in range(17):
            if group[i] is None:  # matching query: sees only matching queries
                expected = group[j] is not None
            else:  # denoising query: its own group and the matching queries
                expected = group[j] is not None and group[j] != group[i]
            assert bool(mask[i, j]) == expected, (i, j)


@pytest.mark.parametrize("masked", [True, False])
def test_no_gradient_from_denoising_queries_into_matching_queries_or_other_groups(masked):
    model = _model(dn_number=10).train()
    inputs = random_inputs(SIZES)
    features, masks, pos = _features(model, inputs)
    targets = model.prepare_targets(inputs)
    dn = _leaf_denoising(model, targets)
    assert dn.num_groups == 2 and dn.max_boxes == 5
    if not masked:  # the same check without the mask must see the leak (the test can fail)
        dn = dn._replace(attn_mask=torch.zeros_like(dn.attn_mask))
    out = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed, denoising=dn)
    num_dn, group_size = dn.num_queries, 2 * dn.max_boxes

    def grads(outputs):
        total = sum((o.double() ** 2).sum() for o in outputs)
        return torch.autograd.grad(total, (dn.content, dn.boxes), retain_graph=True)

    # Matching queries of every layer: states and boxes.
    g_content, g_boxes = grads([out.hs[:, :, num_dn:], out.boxes[:, :, num_dn:]])
    # Group 0's outputs w.r.t. group 1's inputs.
    g0_content, g0_boxes = grads([out.hs[:, :, :group_size], out.boxes[:, :, :group_size]])
    g1_from_0 = torch.cat([g0_content[:, group_size:num_dn].flatten(), g0_boxes[:, group_size:num_dn].flatten()])
    if masked:
        assert torch.count_nonzero(g_content) == 0 and torch.count_nonzero(g_boxes) == 0
        assert torch.count_nonzero(g1_from_0) == 0
        # ... while a group does depend on its own queries.
        assert g0_content[:, :group_size].abs().sum() > 0 and g0_boxes[:, :group_size].abs().sum() > 0
    else:
        assert g_content.abs().sum() > 0 and g1_from_0.abs().sum() > 0


def test_matching_outputs_are_the_same_with_and_without_denoising_queries():
    model = _model().train()
    inputs = random_inputs(SIZES)
    features, masks, pos = _features(model, inputs)
    dn = _leaf_denoising(model, model.prepare_targets(inputs))
    with torch.no_grad():
        plain = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed)
        with_dn = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed, denoising=dn)
    torch.testing.assert_close(with_dn.hs[:, :, dn.num_queries:], plain.hs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_dn.boxes[:, :, dn.num_queries:], plain.boxes, rtol=1e-5, atol=1e-5)


# ---- contrastive denoising: the noise ----------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_box_noise_bounds_and_distribution(scale):
    torch.manual_seed(0)
    n = 20000
    # Small boxes near the centre: no corner can leave the image, so nothing is clipped.
    centre = 0.4 + 0.2 * torch.rand(n, 2)
    size = 0.05 + 0.1 * torch.rand(n, 2)
    boxes = torch.cat([centre, size], 1)
    negative = torch.arange(n) % 2 == 1
    noised = denoising.noise_boxes(boxes, negative, scale)
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    noised_xyxy = torch.cat([noised[:, :2] - noised[:, 2:] / 2, noised[:, :2] + noised[:, 2:] / 2], 1)
    # Each corner coordinate moves by a fraction of half the box size (w/2 for x, h/2 for y).
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], 1) / 2
    moved = (noised_xyxy - xyxy).abs() / (half * scale)
    pos, neg = moved[~negative], moved[negative]
    eps = 1e-4
    assert pos.max() < 1 + eps and neg.min() > 1 - eps and neg.max() < 2 + eps
    # Uniform within the bounds: mean 0.5 / 1.5, quartiles at 0.25 / 0.75 (+1).
    assert abs(pos.mean().item() - 0.5) < 0.01 and abs(neg.mean().item() - 1.5) < 0.01
    assert abs(pos.quantile(0.25).item() - 0.25) < 0.01 and abs(neg.quantile(0.75).item() - 1.75) < 0.01
    # Signs are random: about half of the moves go each way.
    signs = torch.sign(noised_xyxy - xyxy)
    assert abs((signs > 0).float().mean().item() - 0.5) < 0.01


def test_box_noise_is_clipped_to_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.05, 0.05, 0.1, 0.1], [0.9, 0.5, 0.2, 0.9]]).repeat(500, 1)
    noised = denoising.noise_boxes(boxes, torch.ones(len(boxes), dtype=torch.bool), 1.0)
    xyxy = torch.cat([noised[:, :2] - noised[:, 2:] / 2, noised[:, :2] + noised[:, 2:] / 2], 1)
    assert xyxy.min() >= -1e-6 and xyxy.max() <= 1 + 1e-6


def test_label_flip_rate():
    torch.manual_seed(0)
    num_classes, n = 10, 40000
    labels = torch.randint(0, num_classes, (n,))
    noised = denoising.noise_labels(labels, 0.5, num_classes)
    # Replaced with probability ratio / 2 by a uniform class, which differs with probability 9/10.
    changed = (noised != labels).float().mean().item()
    expected = 0.5 / 2 * (num_classes - 1) / num_classes
    assert abs(changed - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    # A flipped label is any other class about equally often.
    counts = torch.bincount(noised[noised != labels], minlength=num_classes).float()
    assert counts.min() / counts.max() > 0.8
    assert torch.equal(denoising.noise_labels(labels, 0.0, num_classes), labels)


def test_denoising_query_layout():
    model = _model(dn_number=12)
    targets = model.prepare_targets(random_inputs([(64, 64, 2), (64, 64, 4), (64, 64, 0)]))
    torch.manual_seed(0)
    dn = denoising.build_denoising_queries(
        targets, dn_number=12, label_noise_ratio=0.0, box_noise_scale=0.0, num_classes=6,
        num_queries=model.num_queries, label_enc=model.label_enc,
    )
    assert isinstance(dn, denoising.DenoisingQueries)
    assert (dn.num_groups, dn.max_boxes, dn.num_queries) == (3, 4, 24)
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(3):
            for half in (0, 1):  # positives, negatives
                start = (2 * g + half) * 4
                assert torch.equal(dn.labels[b, start : start + n], t["labels"])
                torch.testing.assert_close(dn.boxes[b, start : start + n], t["boxes"])
                assert (dn.labels[b, start + n : start + 4] == -1).all()
                assert (dn.content[b, start + n : start + 4] == 0).all()
    torch.testing.assert_close(dn.content[1, :4], model.label_enc(targets[1]["labels"]))
    # The known assignment: positives only, query 2gM + j -> box j.
    idx = denoising.denoising_indices(targets, 3, 4)
    assert idx[1][0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert idx[1][1].tolist() == [0, 1, 2, 3] * 3
    assert idx[2][0].numel() == 0
    # No boxes in the batch: no denoising queries; dn_number 0: no denoising at all.
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    kw = dict(label_noise_ratio=0.5, box_noise_scale=1.0, num_classes=6, num_queries=12, label_enc=model.label_enc)
    assert denoising.build_denoising_queries(empty, dn_number=12, **kw).num_queries == 0
    assert denoising.build_denoising_queries(targets, dn_number=0, **kw) is None


def test_batch_without_boxes_keeps_the_loss_keys_and_every_parameter_in_the_graph():
    """Distributed training (find_unused_parameters=False) needs every parameter to get a
    gradient in every iteration, also when no image of a batch has a box."""
    model = _model(dn_number=10).train()
    with_boxes = model(random_inputs(SIZES))
    losses = model(random_inputs([(72, 88, 0), (64, 96, 0)]))
    assert set(losses) == set(with_boxes)
    for key in ("loss_class_dn", "loss_bbox_dn", "loss_giou_dn", "loss_bbox_dn_0"):
        assert losses[key].item() == 0.0, key
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


# ---- the criterion: matcher and denoising losses -----------------------------------------
class _SpyMatcher(HungarianMatcher):
    def __init__(self):
        super().__init__(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
        self.seen = []

    def forward(self, outputs, targets):
        self.seen.append(tuple(outputs["pred_logits"].shape))
        return super().forward(outputs, targets)


def test_matcher_never_sees_denoising_queries():
    model = _model(dn_number=10).train()
    spy = _SpyMatcher()
    model.criterion.matcher = spy
    losses = model(random_inputs(SIZES))
    # final + 1 auxiliary decoder stage + the encoder stage, each over the 12 matching queries.
    assert spy.seen == [(3, 12, 6)] * 3
    assert {"loss_class_dn", "loss_bbox_dn", "loss_giou_dn", "loss_class_dn_0"} <= set(losses)


def test_denoising_losses_use_the_known_assignment():
    model = _model(dn_number=10).train()
    inputs = random_inputs(SIZES)
    targets = model.prepare_targets(inputs)
    torch.manual_seed(1)
    features, masks = model.extract_features(model.preprocess_image(inputs))
    outputs = model.forward_heads(features, masks, targets)
    dn = outputs["dn_outputs"]
    losses = model.criterion(outputs, targets)
    # L1 of every positive (2 groups) against its own box, over #boxes x #groups, weight 5.
    l1 = 0.0
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(dn["num_groups"]):
            start = g * 2 * dn["max_boxes"]
            l1 += (dn["pred_boxes"][b, start : start + n] - t["boxes"]).abs().sum()
    num_boxes = sum(len(t["labels"]) for t in targets)
    torch.testing.assert_close(losses["loss_bbox_dn"], 5.0 * l1 / (num_boxes * dn["num_groups"]))
    # Class: the positives' true classes are the only positive focal targets; negatives and
    # padding slots are "no object".
    from detrex_lite.modeling.losses import sigmoid_focal_loss

    onehot = torch.zeros_like(dn["pred_logits"])
    for b, t in enumerate(targets):
        for g in range(dn["num_groups"]):
            start = g * 2 * dn["max_boxes"]
            onehot[b, start + torch.arange(len(t["labels"])), t["labels"]] = 1.0
    expected = sigmoid_focal_loss(dn["pred_logits"], onehot, num_boxes * dn["num_groups"])
    torch.testing.assert_close(losses["loss_class_dn"], expected)


# ---- look forward twice ------------------------------------------------------------------
@pytest.mark.parametrize("lft", [True, False])
def test_look_forward_twice_trains_the_previous_box_head(lft):
    model = _model(look_forward_twice=lft, share_heads=False, num_layers=3).train()
    inputs = random_inputs(SIZES)
    features, masks, pos = _features(model, inputs)
    out = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed)
    head0 = list(model.bbox_embed[0].parameters())
    head1 = list(model.bbox_embed[1].parameters())

    def grad(value, params):
        g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return sum(0.0 if x is None else x.abs().sum().item() for x in g)

    # Layer 1's predicted boxes: into layer 0's box head only with look forward twice.
    assert (grad(out.boxes[1].sum(), head0) > 0) == lft
    assert grad(out.boxes[1].sum(), head1) > 0
    # Layer 2's boxes reach back one layer, never two.
    assert grad(out.boxes[2].sum(), head0) == 0
    # The references the layers run on are detached: the decoder states never depend on a box head.
    assert all(not r.requires_grad for r in out.references)
    assert grad(out.hs[2].sum(), head0 + head1) == 0


def test_look_forward_twice_changes_gradients_not_values():
    inputs = random_inputs(SIZES)
    results = []
    for lft in (True, False):
        model = _model(look_forward_twice=lft).eval()
        with torch.no_grad():
            features, masks, pos = _features(model, inputs)
            results.append(model.transformer(features, masks, pos, bbox_embed=model.bbox_embed))
    torch.testing.assert_close(results[0].boxes, results[1].boxes, rtol=0, atol=0)


# ---- mixed query selection ---------------------------------------------------------------
@pytest.mark.parametrize("mixed", [True, False])
def test_query_selection_content_and_anchors(mixed):
    model = _model(mixed_selection=mixed).train()
    assert hasattr(model.transformer, "tgt_embed") == mixed
    inputs = random_inputs(SIZES)
    features, masks, pos = _features(model, inputs)
    out = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed)
    # Anchors are the selected encoder boxes (detached): the first layer's references.
    torch.testing.assert_close(out.references[0], out.enc_boxes.detach())
    enc_params = list(model.transformer.encoder.parameters())
    g = torch.autograd.grad(out.hs[0].sum(), enc_params, allow_unused=True, retain_graph=True)
    # Mixed: the content queries are learned, the decoder reaches the encoder only through the
    # memory it attends to (cross-attention); pure selection: also the same (content detached).
    assert any(x is not None and x.abs().sum() > 0 for x in g)
    if mixed:
        (g_tgt,) = torch.autograd.grad(out.hs[0].sum(), [model.transformer.tgt_embed.weight])
        assert g_tgt.abs().sum() > 0


def test_selected_anchors_are_the_encoder_top_k():
    model = _model().eval()
    inputs = random_inputs(SIZES)
    with torch.no_grad():
        features, masks, pos = _features(model, inputs)
        out = model.transformer(features, masks, pos, bbox_embed=model.bbox_embed, encoder_outputs=True)
    # The selected tokens are those with the highest best-class logit, in descending order.
    best = out.enc_logits.max(-1)[0]
    assert (best[:, :-1] >= best[:, 1:]).all()


# ---- all switches off: two-stage Deformable DETR with box refinement ---------------------
def test_switches_off_is_two_stage_deformable_detr_with_box_refinement():
    dino = _model(dn_number=0, mixed_selection=False, look_forward_twice=False, share_heads=False, num_classes=1).train()
    dd_cfg = tiny_deformable_detr_config("two_stage", num_classes=1, num_queries=12)
    dd_cfg.model.transformer.num_decoder_layers = 2
    dd_cfg.model.transformer.num_encoder_layers = 2
    torch.manual_seed(0)
    ddetr = instantiate(dd_cfg.model).train()
    assert ddetr.with_box_refine and ddetr.as_two_stage

    # Same encoder and decoder layers (Deformable DETR's classes), same names and shapes.
    assert isinstance(dino.transformer.encoder, DeformableTransformerEncoder)
    assert all(isinstance(layer, DeformableTransformerDecoderLayer) for layer in dino.transformer.decoder.layers)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(dino.transformer.encoder) == shapes(ddetr.transformer.encoder)
    assert shapes(dino.transformer.decoder.layers) == shapes(ddetr.transformer.decoder.layers)

    # With Deformable DETR's weights (its proposal heads as the encoder heads), the same memory
    # selects the same proposals: DINO's anchors are Deformable DETR's initial references, and
    # with one class "best class" is Deformable DETR's objectness.
    dino.transformer.level_embed.data.copy_(ddetr.transformer.level_embed)
    dino.transformer.encoder.load_state_dict(ddetr.transformer.encoder.state_dict())
    for name in ("enc_output", "enc_output_norm"):
        getattr(dino.transformer, name).load_state_dict(getattr(ddetr.transformer, name).state_dict())
    dino.transformer.enc_out_class_embed.load_state_dict(ddetr.class_embed[2].state_dict())
    dino.transformer.enc_out_bbox_embed.load_state_dict(ddetr.bbox_embed[2].state_dict())
    inputs = random_inputs(SIZES, num_classes=1)
    features, masks, pos = _features(dino, inputs)
    d_out = dino.transformer(features, masks, pos, bbox_embed=dino.bbox_embed)
    dd_out = ddetr.transformer(
        features, masks, pos, bbox_embed=ddetr.bbox_embed, refine=True,
        proposal_heads=(ddetr.class_embed[2], ddetr.bbox_embed[2]),
    )
    torch.testing.assert_close(d_out.references[0], dd_out.references[0], rtol=0, atol=0)
    # Box refinement as Deformable DETR's: each layer refines the previous layer's (detached)
    # box, and a layer's loss reaches no earlier box head.
    assert all(not r.requires_grad for r in d_out.references)
    for model, boxes in ((dino, d_out.boxes), (ddetr, dd_out.boxes)):
        head0 = list(model.bbox_embed[0].parameters())
        g = torch.autograd.grad(boxes[1].sum(), head0, allow_unused=True, retain_graph=True)
        assert all(x is None or torch.count_nonzero(x) == 0 for x in g)

    # Same size: the parameters differ exactly by DINO's query-position head and decoder norm
    # and the (unused, dn_number=0) label embedding, against Deformable DETR's proposal
    # embedding (pos_trans + its norm).
    d, k = 32, 1
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    dino_only = (2 * d * d + d) + (d * d + d) + 2 * d + k * d
    ddetr_only = (2 * d * 2 * d + 2 * d) + 2 * 2 * d
    assert count(dino) - dino_only == count(ddetr) - ddetr_only

    # The same loss terms as two-stage Deformable DETR: no denoising stages.
    batch = random_inputs(SIZES, num_classes=1)
    assert set(dino(batch)) == set(ddetr(batch))
    # The content queries come from the selected tokens: no learned content queries.
    assert not any(k.startswith("transformer.tgt_embed") for k in dino.state_dict())
