"""DINO checkpoints through the shared converter and strict loader.

The released layouts (IDEA-Research/DINO's ``checkpoint0011_4scale.pth`` and detrex's DINO) are
written down as names and shapes (tests/fixtures/dino_*_r50_4scale.txt, from the rules in
tests/dino_release_layouts.py). At the release size the names must convert and load strictly into
the shipped R50 config; at a small size the round trip is checked by value: a model's weights,
renamed into the released layout by an inverse table written here, convert back, load strictly
and give exactly the same outputs, and every tensor lands back in its place.
"""
import argparse
import importlib.util
import os
import re

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import ImageList

from detrex_lite.checkpoint import CheckpointMismatchError, ConversionError, apply_state_dict, convert_state_dict, load_weights
from detrex_lite.checkpoint.class_heads import coco_contiguous_to_id
from detrex_lite.checkpoint.convert import detect_source
from detrex_lite.config import apply_overrides_checked, load_config_file
from dino_release_layouts import FIXTURES, detrex_dino_layout, official_dino_layout, random_state_dict, read_layout
from random_weights import randomize
from projects.deformable_detr.checkpoint import is_official_deformable_detr
from projects.dino.checkpoint import detrex_dino_to_detrex, is_detrex_dino, is_official_dino

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "projects/dino/configs/dino_r50_4scale_12ep.py"
# a small DINO of the shipped config: ResNet-18, d 32, 2 heads, FFN 64, 2 + 2 layers, 10 queries
SMALL = dict(depth=18, d=32, heads=2, ffn=64, enc_layers=2, dec_layers=2, queries=10)
SMALL_OVERRIDES = [
    "model.backbone.depth=18", "model.transformer.d_model=32", "model.transformer.nhead=2",
    "model.transformer.dim_feedforward=64", "model.transformer.num_encoder_layers=2",
    "model.transformer.num_decoder_layers=2", "model.num_queries=10",
]


def _cfg(overrides=(), path=CONFIG):
    return apply_overrides_checked(load_config_file(os.path.join(REPO, path)), list(overrides))


def _small_dino(num_classes, *extra):
    return instantiate(_cfg(SMALL_OVERRIDES + [f"model.num_classes={num_classes}", *extra]).model).eval()


def _randomized(model, seed):
    randomize(model, seed)
    return model


def _outputs(model, seed=1, h=64, w=96):
    pixels = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        features, masks = model.extract_features(ImageList(pixels, [(h, w)]))
        return model.forward_heads(features, masks)


def _assert_same_outputs(a, b):
    out_a, out_b = _outputs(a), _outputs(b)
    assert torch.equal(out_a["pred_logits"], out_b["pred_logits"])
    assert torch.equal(out_a["pred_boxes"], out_b["pred_boxes"])


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _assert_same_tensors(got, expected):
    assert _shapes(got) == _shapes(expected)
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert different == []


# ------------------------------------------------------------------ ours -> released (inverse tables)
def _d2_to_torchvision(name):
    for pattern, repl in (
        (r"stem\.conv1\.weight", "conv1.weight"),
        (r"stem\.conv1\.norm\.(.+)", r"bn1.\1"),
        (r"res(\d)\.(\d+)\.conv(\d)\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
        (r"res(\d)\.(\d+)\.conv(\d)\.norm\.(.+)", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
        (r"res(\d)\.(\d+)\.shortcut\.weight", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
        (r"res(\d)\.(\d+)\.shortcut\.norm\.(.+)", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
    ):
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise KeyError(name)


def _to_official(ours, label_book_row):
    """Our DINO state dict in the official layout: torchvision backbone, input_proj, label_enc
    with its extra row, the decoder's aliases of the heads (the same tensors)."""
    out = {}
    for k, v in ours.items():
        if k.startswith("backbone."):
            out["backbone.0.body." + _d2_to_torchvision(k[len("backbone."):])] = v
        elif k.startswith("neck.input_proj."):
            out[k[len("neck."):]] = v
        elif k == "label_enc.weight":
            out[k] = torch.cat([v, label_book_row])
        else:
            out[k] = v
        if re.match(r"(class_embed|bbox_embed)\.\d+\.", k):
            out["transformer.decoder." + k] = v
    return out


def _to_detrex(ours, num_decoder_layers, num_convs=3):
    """Our DINO state dict in detrex's layout."""
    n = num_decoder_layers
    table = [
        (r"neck\.input_proj\.(\d+)\.([01])\.(.+)", lambda m: (
            f"neck.convs.{m[1]}" if int(m[1]) < num_convs else f"neck.extra_convs.{int(m[1]) - num_convs}"
        ) + (".conv." if m[2] == "0" else ".norm.") + m[3]),
        (r"transformer\.level_embed", "transformer.level_embeds"),
        (r"transformer\.encoder\.layers\.(\d+)\.self_attn\.(.+)", r"transformer.encoder.layers.\1.attentions.0.\2"),
        (r"transformer\.decoder\.layers\.(\d+)\.self_attn\.(.+)", r"transformer.decoder.layers.\1.attentions.0.attn.\2"),
        (r"transformer\.decoder\.layers\.(\d+)\.cross_attn\.(.+)", r"transformer.decoder.layers.\1.attentions.1.\2"),
        (r"transformer\.encoder\.layers\.(\d+)\.norm([12])\.(.+)", lambda m: f"transformer.encoder.layers.{m[1]}.norms.{int(m[2]) - 1}.{m[3]}"),
        (r"transformer\.decoder\.layers\.(\d+)\.norm([123])\.(.+)",
         lambda m: f"transformer.decoder.layers.{m[1]}.norms.{ {'2': 0, '1': 1, '3': 2}[m[2]] }.{m[3]}"),
        (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.linear1\.(.+)", r"transformer.\1.layers.\2.ffns.0.layers.0.0.\3"),
        (r"transformer\.(encoder|decoder)\.layers\.(\d+)\.linear2\.(.+)", r"transformer.\1.layers.\2.ffns.0.layers.1.\3"),
        (r"transformer\.enc_out_(class_embed|bbox_embed)\.(.+)", rf"\1.{n}.\2"),
    ]
    out = {}
    for k, v in ours.items():
        new = k
        for pattern, repl in table:
            if re.fullmatch(pattern, k):
                new = re.sub(pattern, repl, k)
                break
        out[new] = v
        if re.match(r"(class_embed|bbox_embed)\.\d+\.", new):
            out["transformer.decoder." + new] = v
    return out


def _official_aliases(layout):
    """Official shared heads: every class/box head key is the tensor of head 0."""
    aliases = {}
    for key in layout:
        m = re.fullmatch(r"(?:transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.+)", key)
        if m and key != f"{m[1]}.0.{m[3]}":
            aliases[key] = f"{m[1]}.0.{m[3]}"
    return aliases


def _detrex_aliases(layout):
    return {k: k[len("transformer.decoder."):] for k in layout if re.match(r"transformer\.decoder\.(class|bbox)_embed\.", k)}


# ------------------------------------------------------------------ the release-size fixtures
def test_fixtures_are_the_written_down_layouts():
    assert read_layout(os.path.join(FIXTURES, "dino_official_r50_4scale.txt")) == official_dino_layout()
    assert read_layout(os.path.join(FIXTURES, "dino_detrex_r50_4scale.txt")) == detrex_dino_layout()


def test_release_names_load_strictly_into_the_r50_config():
    """Every name and shape of the official R50 release converts and loads strictly into the
    shipped dino_r50_4scale_12ep model (91 COCO-id rows -> 80 classes); detrex's R50 likewise
    with per-layer heads (model.share_heads=False)."""
    official = read_layout(os.path.join(FIXTURES, "dino_official_r50_4scale.txt"))
    zeros = {k: torch.zeros(v) for k, v in official.items()}
    converted, meta = convert_state_dict(zeros)
    assert meta == {"source": "official-dino", "architecture": "dino"}
    model = instantiate(_cfg().model)
    assert _shapes(converted) == _shapes(model.state_dict())
    apply_state_dict(model, converted, purpose="eval")

    detrex = read_layout(os.path.join(FIXTURES, "dino_detrex_r50_4scale.txt"))
    converted = detrex_dino_to_detrex({k: torch.zeros(v) for k, v in detrex.items()})
    model = instantiate(_cfg(["model.share_heads=False"]).model)
    assert _shapes(converted) == _shapes(model.state_dict())
    apply_state_dict(model, converted, purpose="eval")


# ------------------------------------------------------------------ round trips at a small size
@pytest.mark.parametrize("source", [None, "official-dino"])
def test_official_round_trip(source):
    """ours -> official layout (== the written-down one) -> convert -> strict load -> the same
    outputs, and every tensor back in its place."""
    a = _randomized(_small_dino(7), seed=0)
    official = _to_official(a.state_dict(), torch.randn(1, SMALL["d"]))
    assert _shapes(official) == official_dino_layout(**SMALL, classes=7, labelbook=7)
    converted, meta = convert_state_dict(official, source)
    assert meta == {"source": "official-dino", "architecture": "dino"}
    b = _small_dino(7)
    apply_state_dict(b, converted, purpose="eval")
    _assert_same_outputs(a, b)
    _assert_same_tensors(_to_official(b.state_dict(), official["label_enc.weight"][-1:]), official)


def test_official_coco_class_rows():
    """91 COCO-id rows (the release) -> 80 contiguous classes in every class head and label_enc:
    each kept class gets exactly its logit. The unused ids' encoder logits are made the lowest, as
    in the trained release (they are never positive), so that the token selection is the same."""
    layout = official_dino_layout(**SMALL, classes=91, labelbook=91)
    official = random_state_dict(layout, aliases=_official_aliases(layout), seed=3)
    ids = coco_contiguous_to_id()
    unused = sorted(set(range(91)) - set(ids))
    official["transformer.enc_out_class_embed.bias"][unused] = -100.0

    coco = _small_dino(80)
    apply_state_dict(coco, convert_state_dict(official)[0], purpose="eval")
    full = _small_dino(91)
    apply_state_dict(full, convert_state_dict(official, class_map="none")[0], purpose="eval")
    assert torch.equal(coco.label_enc.weight, official["label_enc.weight"][ids])
    assert torch.equal(full.label_enc.weight, official["label_enc.weight"][:91])
    got, ref = _outputs(coco), _outputs(full)
    # Equal up to float32 summation order: an 80- and a 91-row head split their matrix products
    # differently across threads (bit-identical with one thread).
    torch.testing.assert_close(got["pred_logits"], ref["pred_logits"][..., ids], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["pred_boxes"], ref["pred_boxes"], rtol=0, atol=1e-5)


def test_detrex_round_trip():
    """ours (per-layer heads) -> detrex layout (== the written-down one) -> convert -> strict
    load -> the same outputs, every tensor back in its place."""
    a = _randomized(_small_dino(80, "model.share_heads=False"), seed=1)
    detrex = _to_detrex(a.state_dict(), num_decoder_layers=2)
    assert _shapes(detrex) == detrex_dino_layout(**SMALL, classes=80)
    converted = detrex_dino_to_detrex(detrex)
    b = _small_dino(80, "model.share_heads=False")
    apply_state_dict(b, converted, purpose="eval")
    _assert_same_outputs(a, b)
    _assert_same_tensors(_to_detrex(b.state_dict(), num_decoder_layers=2), detrex)


def test_detrex_through_convert_state_dict():
    """detrex's releases use detectron2's ResNet names (this project's): the families are asked
    before those names are refused as already converted."""
    layout = detrex_dino_layout(**SMALL, classes=80)
    detrex = random_state_dict(layout, aliases=_detrex_aliases(layout), seed=2)
    converted, meta = convert_state_dict(detrex)
    assert meta == {"source": "detrex-dino", "architecture": "dino"}
    assert _shapes(converted) == _shapes(detrex_dino_to_detrex(detrex))


def test_detection_claims_only_its_layout():
    layout = official_dino_layout(**SMALL, classes=7, labelbook=7)
    official = random_state_dict(layout, aliases=_official_aliases(layout))
    assert detect_source(official) == ("official-dino", "dino")
    assert not is_official_deformable_detr(official) and not is_detrex_dino(official)
    detrex = {k: torch.zeros(1) for k in detrex_dino_layout(**SMALL)}
    assert is_detrex_dino(detrex) and not is_official_dino(detrex) and not is_official_deformable_detr(detrex)
    ours = _small_dino(7).state_dict()
    assert not (is_official_dino(ours) or is_detrex_dino(ours) or is_official_deformable_detr(ours))
    # official Deformable DETR (one-stage and two-stage keys): not DINO's
    for extra in ("transformer.reference_points.weight", "transformer.pos_trans.weight"):
        deformable = {k: torch.zeros(1) for k in ("transformer.level_embed", "backbone.0.body.conv1.weight",
                                                  "transformer.decoder.layers.0.norm1.weight", "class_embed.0.weight", extra)}
        assert detect_source(deformable) == ("official-deformable-detr", "deformable_detr")
        assert not is_official_dino(deformable)


def test_unknown_official_key_is_named():
    layout = official_dino_layout(**SMALL, classes=7, labelbook=7)
    official = random_state_dict(layout, aliases=_official_aliases(layout))
    official["transformer.two_stage_wh_embedding.weight"] = torch.zeros(1, 2)
    with pytest.raises(ConversionError, match=r"transformer\.two_stage_wh_embedding\.weight"):
        convert_state_dict(official)


# ------------------------------------------------------------------ the command line
def _cli():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _official_file(path, seed=4):
    layout = official_dino_layout(**SMALL, classes=91, labelbook=91)
    args = argparse.Namespace(
        num_queries=10, hidden_dim=32, enc_layers=2, dec_layers=2, num_feature_levels=4, embed_init_tgt=True,
        two_stage_type="standard", dec_pred_class_embed_share=True, dec_pred_bbox_embed_share=True, dn_number=100,
    )
    torch.save({"model": random_state_dict(layout, aliases=_official_aliases(layout), seed=seed), "epoch": 11, "args": args}, path)


def test_cli_official_checkpoint(tmp_path):
    """The release file format ({"model", "epoch", "args"}) -> detected, converted (COCO rows),
    checked against the shipped config with overrides -> loads for evaluation."""
    _official_file(tmp_path / "checkpoint0011_4scale.pth")
    out = str(tmp_path / "dino.pth")
    argv = [str(tmp_path / "checkpoint0011_4scale.pth"), out, "--check-config", os.path.join(REPO, CONFIG), *SMALL_OVERRIDES]
    assert _cli()(argv) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["source"] == "official-dino" and saved["architecture"] == "dino"
    assert saved["meta"]["arch"] == {
        "meta_architecture": "DINO", "num_feature_levels": 4, "num_encoder_layers": 2, "num_decoder_layers": 2,
        "num_queries": 10, "d_model": 32, "mixed_selection": True, "share_heads": True, "num_classes": 80,
    }
    assert len(saved["meta"]["thing_classes"]) == 80
    load_weights(_small_dino(80), out, purpose="eval")


# ------------------------------------------------------------------ mismatch messages
def test_per_layer_heads_into_a_shared_head_config_name_the_option():
    a = _randomized(_small_dino(80, "model.share_heads=False"), seed=5)
    with pytest.raises(CheckpointMismatchError, match=r"model\.share_heads=False.*model\.share_heads=True"):
        apply_state_dict(_small_dino(80), a.state_dict(), purpose="eval")


def test_learned_content_queries_name_mixed_selection(tmp_path):
    _official_file(tmp_path / "official.pth")
    out = str(tmp_path / "dino.pth")
    assert _cli()([str(tmp_path / "official.pth"), out]) == 0
    with pytest.raises(CheckpointMismatchError, match=r"model\.mixed_selection=True, the config has False"):
        load_weights(_small_dino(80, "model.mixed_selection=False"), out, purpose="eval")


_DEFORMABLE_SMALL = [o for o in SMALL_OVERRIDES if not o.startswith("model.num_queries")]


@pytest.mark.parametrize(
    "config, overrides",
    [
        # a two-stage, box-refinement Deformable DETR of the same sizes: no arch fact differs
        ("deformable_detr_r50_two_stage_50ep.py", _DEFORMABLE_SMALL + ["model.num_queries=10"]),
        # the default (one-stage) Deformable DETR: the other family is named before any field
        ("deformable_detr_r50_50ep.py", _DEFORMABLE_SMALL),
    ],
)
def test_dino_weights_into_a_deformable_detr_config_say_dino(tmp_path, config, overrides):
    _official_file(tmp_path / "official.pth")
    out = str(tmp_path / "dino.pth")
    assert _cli()([str(tmp_path / "official.pth"), out]) == 0
    deformable = instantiate(_cfg(overrides, path=f"projects/deformable_detr/configs/{config}").model).eval()
    for load in (
        lambda: load_weights(deformable, out, purpose="eval"),  # with the stored facts
        lambda: apply_state_dict(deformable, torch.load(out, weights_only=True)["model"], purpose="eval"),
    ):
        with pytest.raises(CheckpointMismatchError) as err:
            load()
        assert "these are detrex_lite DINO weights and the config builds DeformableDETR: use a DINO config" in str(err.value), str(err.value)


def test_fine_tuning_to_another_class_count_keeps_every_class_row_initialised():
    """train.init_checkpoint with another class count (COCO weights -> a 6-class dataset): every
    class-indexed tensor (decoder and encoder class heads, the denoising label embedding) keeps its
    initialisation, the rest loads; a strict purpose still refuses."""
    source = _randomized(_small_dino(80), seed=3)
    target = _small_dino(6)
    report = apply_state_dict(target, source.state_dict(), purpose="train")
    skipped = {key for key, _, _ in report.skipped_class_heads}
    assert "label_enc.weight" in skipped and any(k.startswith("transformer.enc_out_class_embed.") for k in skipped)
    assert any(k.startswith("class_embed.") for k in skipped)
    own = target.state_dict()
    for key, value in source.state_dict().items():
        if key not in skipped:
            assert torch.equal(own[key], value), key
    with pytest.raises(CheckpointMismatchError, match="the checkpoint has 80 classes, the config 6"):
        apply_state_dict(_small_dino(6), source.state_dict(), purpose="eval")
