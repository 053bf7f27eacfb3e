"""DINO checkpoint conversion on the names and shapes of the released checkpoints
(tests/dino_checkpoint_names.py; no network): official / detrex names -> ours -> the strict
loader, and the converted model's outputs are the official 91-logit model's at the kept rows."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detrex_lite.checkpoint import ConversionError, apply_state_dict
from detrex_lite.checkpoint.class_heads import coco_contiguous_to_id
from projects.dino.checkpoint import detrex_dino_to_ours, is_detrex_dino, is_official_dino, official_dino_to_ours
from tests.dino_checkpoint_names import detrex_dino_4scale, official_dino_4scale

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, "projects/dino/configs/models/dino_r50.py")
TIED_OFFICIAL = ("class_embed", "bbox_embed")


def _random_state_dict(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=g) * 0.02
        if name.endswith("running_var"):
            value = value.abs() + 1.0
        out[name] = value
    return out


def _official_state_dict():
    sd = _random_state_dict(official_dino_4scale())
    # One shared class head and box head (saved under every layer index and again in the decoder).
    for key in list(sd):
        name = key[len("transformer.decoder."):] if key.startswith("transformer.decoder.") else key
        head, _, rest = name.partition(".")
        if head in TIED_OFFICIAL and (name != key or not rest.startswith("0.")):
            sd[key] = sd[f"{head}.0.{rest.partition('.')[2]}"]
    # A trained model never fires the COCO ids that have no category: keep those logits low, so
    # that the 91-logit model ranks the encoder tokens as the 80-class one does.
    unused = sorted(set(range(91)) - set(coco_contiguous_to_id()))
    for key in ("class_embed.0.bias", "transformer.enc_out_class_embed.bias"):
        sd[key][unused] = -20.0
    return sd


def _model(num_classes, **fields):
    cfg = LazyConfig.load(MODEL)
    cfg.model.num_classes = num_classes
    for key, value in fields.items():
        cfg.model[key] = value
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def test_fixture_ties_are_official():
    sd = _official_state_dict()
    assert sd["class_embed.5.weight"] is sd["class_embed.0.weight"]
    assert sd["transformer.decoder.bbox_embed.3.layers.2.bias"] is sd["bbox_embed.0.layers.2.bias"]
    assert len(official_dino_4scale()) == len(sd)


def test_format_detection():
    official = official_dino_4scale()
    detrex = detrex_dino_4scale()
    assert is_official_dino(official) and not is_detrex_dino(official)
    assert is_detrex_dino(detrex) and not is_official_dino(detrex)
    # Deformable DETR's official two-stage checkpoint is not DINO.
    ddetr = {"transformer.level_embed": 0, "transformer.enc_output.weight": 0, "backbone.0.body.conv1.weight": 0}
    assert not is_official_dino(ddetr) and not is_detrex_dino(ddetr)


@pytest.mark.slow
def test_official_round_trip_strict_load_and_outputs():
    sd = _official_state_dict()
    coco = official_dino_to_ours(sd, class_map="coco")
    full = official_dino_to_ours(sd, class_map="none")
    ids = coco_contiguous_to_id()

    model = _model(80)
    assert set(coco) == set(model.state_dict())  # every parameter, no more
    report = apply_state_dict(model, coco, purpose="eval")
    assert not report.missing and not report.unexpected
    # Values: renamed, not changed (class rows selected by COCO id, label_enc's 92nd row dropped).
    torch.testing.assert_close(model.class_embed[3].weight, sd["class_embed.0.weight"][ids])
    torch.testing.assert_close(model.label_enc.weight, sd["label_enc.weight"][ids])
    torch.testing.assert_close(model.neck.input_proj[3][0].weight, sd["input_proj.3.0.weight"])
    torch.testing.assert_close(model.backbone.res5[0].shortcut.weight, sd["backbone.0.body.layer4.0.downsample.0.weight"])
    assert full["label_enc.weight"].shape == (91, 256)

    reference = _model(91)
    apply_state_dict(reference, full, purpose="eval")
    g = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 224, 256), dtype=torch.uint8, generator=g), "height": 224, "width": 256}]
    with torch.no_grad():
        outs = []
        for m in (model, reference):
            features, masks = m.extract_features(m.preprocess_image(inputs))
            outs.append(m.forward_heads(features, masks))
    ours, theirs = outs
    torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours["pred_logits"], theirs["pred_logits"][..., ids], rtol=0, atol=1e-6)


def test_detrex_names_strict_load():
    sd = _random_state_dict(detrex_dino_4scale())
    for key in list(sd):  # the decoder's aliases hold the top-level heads
        if key.startswith("transformer.decoder.class_embed.") or key.startswith("transformer.decoder.bbox_embed."):
            sd[key] = sd[key[len("transformer.decoder."):]]
    ours = detrex_dino_to_ours(sd)
    model = _model(80, share_heads=False)
    assert set(ours) == set(model.state_dict())
    report = apply_state_dict(model, ours, purpose="eval")
    assert not report.missing and not report.unexpected
    assert model.transformer.enc_out_class_embed.weight.data_ptr() != model.class_embed[5].weight.data_ptr()
    torch.testing.assert_close(model.transformer.enc_out_class_embed.weight, sd["class_embed.6.weight"])
    torch.testing.assert_close(model.transformer.enc_out_bbox_embed.layers[1].bias, sd["bbox_embed.6.layers.1.bias"])
    layer = model.transformer.decoder.layers[2]
    torch.testing.assert_close(layer.norm2.weight, sd["transformer.decoder.layers.2.norms.0.weight"])  # after self-attn
    torch.testing.assert_close(layer.norm1.weight, sd["transformer.decoder.layers.2.norms.1.weight"])  # after cross-attn
    torch.testing.assert_close(layer.norm3.weight, sd["transformer.decoder.layers.2.norms.2.weight"])
    torch.testing.assert_close(layer.linear2.weight, sd["transformer.decoder.layers.2.ffns.0.layers.1.weight"])
    torch.testing.assert_close(model.neck.input_proj[3][1].bias, sd["neck.extra_convs.0.norm.bias"])
    torch.testing.assert_close(model.transformer.level_embed, sd["transformer.level_embeds"])


def test_wrong_format_is_named():
    with pytest.raises(ConversionError, match="official DINO: no 'backbone.0.body.'"):
        official_dino_to_ours(detrex_dino_4scale())
    with pytest.raises(ConversionError, match="detrex DINO: no 'transformer.level_embeds'"):
        detrex_dino_to_ours(official_dino_4scale())
    official = _official_state_dict()
    official["refpoint_embed.weight"] = torch.zeros(900, 4)  # a one-stage DINO variant: not ours
    with pytest.raises(ConversionError, match="match no conversion rule"):
        official_dino_to_ours(official)
