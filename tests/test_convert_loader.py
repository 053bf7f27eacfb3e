"""tools/convert_checkpoint.py end to end, and strict loading: every mismatch is named with both
shapes; a different class count loads everything except the class heads."""
import argparse
import importlib.util
import logging
import os

import pytest
import torch
import torchvision

transformers = pytest.importorskip("transformers")

from detrex_lite.checkpoint import (  # noqa: E402
    CheckpointMismatchError,
    ConversionError,
    DetrexCheckpointer,
    convert_state_dict,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from projects.deformable_detr.checkpoint import hf_to_official_deformable_detr  # noqa: E402
from test_convert_parity import _hf_deformable, _hf_detr, _input, _our_deformable, _our_detr, _our_outputs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", os.path.join(REPO, "tools", "convert_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _hf_outputs(hf, pixels):
    with torch.no_grad():
        return hf(pixel_values=pixels, pixel_mask=torch.ones(1, *pixels.shape[-2:], dtype=torch.long))


def test_cli_hf_directory(tmp_path):
    """save_pretrained directory (safetensors, transformers-4 names, tied copies dropped) ->
    CLI with format detection -> strict load -> same predictions."""
    kwargs = dict(with_box_refine=True, two_stage=True)
    hf = _hf_deformable(num_labels=7, **kwargs)
    hf.save_pretrained(tmp_path / "hf")
    out = str(tmp_path / "converted.pth")
    assert _cli()([str(tmp_path / "hf"), out]) == 0

    saved = torch.load(out, weights_only=True)
    assert saved["source"] == "hf" and saved["model"]["transformer.level_embed"].shape == (4, 32)
    ours = _our_deformable(num_classes=7, **kwargs)
    report = load_checkpoint(ours, out)
    assert report.missing == [] and report.unexpected == [] and report.skipped_class_heads == []
    pixels = _input(seed=4)
    ref = _hf_outputs(hf, pixels)
    got = _our_outputs(ours, pixels)
    torch.testing.assert_close(got["pred_logits"], ref.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got["pred_boxes"], ref.pred_boxes, rtol=0, atol=1e-4)


def test_cli_official_checkpoint_with_args(tmp_path):
    """The official repositories save {"model", "optimizer", "epoch", "args": Namespace}: it is
    read without unpickling arbitrary code, detected and converted."""
    hf = _hf_deformable(num_labels=7)
    official = {
        "model": hf_to_official_deformable_detr(hf.state_dict()),
        "epoch": 49,
        "args": argparse.Namespace(lr=2e-4, with_box_refine=False),
    }
    torch.save(official, tmp_path / "checkpoint.pth")
    out = str(tmp_path / "converted.pth")
    assert _cli()([str(tmp_path / "checkpoint.pth"), out]) == 0
    assert torch.load(out, weights_only=True)["source"] == "official-deformable-detr"
    load_checkpoint(_our_deformable(num_classes=7), out)


def test_cli_rejects_wrong_format(tmp_path, capsys):
    hf = _hf_detr(num_labels=6)
    torch.save(hf.state_dict(), tmp_path / "detr.bin")
    assert _cli()(["--from", "official-detr", str(tmp_path / "detr.bin"), str(tmp_path / "out.pth")]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("convert_checkpoint:")]
    assert len(lines) == 1 and lines[0].startswith("convert_checkpoint: error: ") and "keys look like hf" in lines[0]
    assert not os.path.exists(tmp_path / "out.pth")


def test_different_class_count_skips_only_class_heads(caplog):
    converted, _ = convert_state_dict(_hf_deformable(num_labels=7, with_box_refine=True).state_dict())
    ours = _our_deformable(num_classes=3, with_box_refine=True)
    heads_before = {k: v.clone() for k, v in ours.state_dict().items() if k.startswith("class_embed")}
    with caplog.at_level(logging.WARNING, logger="detrex_lite.checkpoint.loader"):
        report = load_model_state(ours, converted)
    assert sorted(k for k, _, _ in report.skipped_class_heads) == sorted(heads_before)
    messages = [r.getMessage() for r in caplog.records if "class heads" in r.getMessage()]
    assert len(messages) == 1 and "7 outputs" in messages[0] and "3" in messages[0]
    state = ours.state_dict()
    for key, value in state.items():
        if key.startswith("class_embed"):
            assert torch.equal(value, heads_before[key])  # kept its initialisation
        else:
            assert torch.equal(value, converted[key]), key


def test_shape_mismatch_names_parameter_and_both_shapes():
    converted, _ = convert_state_dict(_hf_detr(num_labels=6).state_dict())
    converted["transformer.encoder.layers.0.linear1.weight"] = torch.zeros(128, 32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_state(_our_detr(num_classes=6), converted)
    assert "transformer.encoder.layers.0.linear1.weight: (128, 32) in the checkpoint, (64, 32) in the model" in str(err.value)


def test_missing_and_unexpected_keys_are_listed():
    converted, _ = convert_state_dict(_hf_detr(num_labels=6).state_dict())
    del converted["query_embed.weight"]
    converted["transformer.decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_state(_our_detr(num_classes=6), converted)
    assert "query_embed.weight" in str(err.value) and "transformer.decoder.extra.weight" in str(err.value)


def test_unconverted_weights_get_a_conversion_hint():
    with pytest.raises(CheckpointMismatchError, match=r"convert_checkpoint\.py --from hf"):
        load_model_state(_our_detr(num_classes=6), _hf_detr(num_labels=6).state_dict())


def test_torchvision_backbone_is_a_partial_checkpoint(tmp_path):
    from detrex_lite.layers import PositionEmbeddingSine
    from detrex_lite.modeling import HungarianMatcher, SetCriterion, build_resnet
    from projects.detr.modeling import DETR, DetrTransformer

    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    out = str(tmp_path / "r18.pth")
    assert _cli()([str(tmp_path / "resnet18.pth"), out]) == 0
    model = DETR(
        backbone=build_resnet(depth=18, out_features=["res5"]),
        position_embedding=PositionEmbeddingSine(embed_dim=32, offset=0.0),
        transformer=DetrTransformer(d_model=32, nhead=2, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1),
        num_classes=3,
        criterion=SetCriterion(num_classes=3, matcher=HungarianMatcher(cost_class_type="ce_cost"), loss_class_type="ce_loss"),
        num_queries=5,
    )
    report = load_checkpoint(model, out)  # transformer keys missing: expected, not an error
    assert report.missing and all(not k.startswith("backbone.") for k in report.missing)
    assert torch.equal(model.backbone.res5[1].conv2.norm.running_var, tv.layer4[1].bn2.running_var)

    # through detectron2's checkpointer as train_net uses it
    DetrexCheckpointer(model).load(out)

    # a backbone tensor missing from a backbone checkpoint is still an error
    saved = torch.load(out, weights_only=True)
    del saved["model"]["backbone.res4.0.conv1.weight"]
    save_checkpoint(str(tmp_path / "broken.pth"), saved.pop("model"), **saved)
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.res4\.0\.conv1\.weight"):
        load_checkpoint(model, str(tmp_path / "broken.pth"))


def test_detectron2_checkpointer_raises_on_wrong_shape(tmp_path):
    converted, meta = convert_state_dict(_hf_detr(num_labels=6).state_dict())
    converted["input_proj.weight"] = converted["input_proj.weight"][:16]
    save_checkpoint(str(tmp_path / "bad.pth"), converted, **meta)
    with pytest.raises(CheckpointMismatchError, match=r"input_proj\.weight: \(16, 256, 1, 1\) in the checkpoint"):
        DetrexCheckpointer(_our_detr(num_classes=6)).load(str(tmp_path / "bad.pth"))
