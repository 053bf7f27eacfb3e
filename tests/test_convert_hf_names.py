"""Hugging Face -> official names: every HF tensor lands on exactly one official name, with its
shape, and the result is exactly the official key set (written out below from the official
model definitions, independently of the conversion table)."""
import tempfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

from detrex_lite.checkpoint.io import load_state_dict  # noqa: E402
from detrex_lite.checkpoint.rename import ConversionError  # noqa: E402
from projects.deformable_detr.checkpoint import hf_to_official_deformable_detr  # noqa: E402
from projects.detr.checkpoint import hf_to_official_detr  # noqa: E402

from hf_tiny_variants import BACKBONE, DEFORMABLE_VARIANTS  # noqa: E402

TINY = dict(
    d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_labels=5,
)


def _official_resnet_keys(depths=(1, 1, 1, 1)):
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1.weight"} | {f"bn1.{b}" for b in bn}
    for layer, depth in enumerate(depths, start=1):
        for block in range(depth):
            p = f"layer{layer}.{block}."
            keys |= {p + f"conv{k}.weight" for k in (1, 2, 3)}
            keys |= {p + f"bn{k}.{b}" for k in (1, 2, 3) for b in bn}
            if block == 0:
                keys |= {p + "downsample.0.weight"} | {p + f"downsample.1.{b}" for b in bn}
    return {"backbone.0.body." + k for k in keys}


def _wb(prefix):
    return {prefix + ".weight", prefix + ".bias"}


def official_deformable_keys(num_enc, num_dec, num_levels, num_backbone_outs, two_stage, refine):
    """The state-dict keys of the official DeformableDETR (models/deformable_detr.py and
    deformable_transformer.py of fundamentalvision/Deformable-DETR)."""
    keys = _official_resnet_keys()
    for i in range(num_levels):
        keys |= _wb(f"input_proj.{i}.0") | _wb(f"input_proj.{i}.1")
    keys.add("transformer.level_embed")
    msda = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    for i in range(num_enc):
        p = f"transformer.encoder.layers.{i}."
        for m in msda:
            keys |= _wb(p + "self_attn." + m)
        for m in ("norm1", "linear1", "linear2", "norm2"):
            keys |= _wb(p + m)
    for i in range(num_dec):
        p = f"transformer.decoder.layers.{i}."
        for m in msda:
            keys |= _wb(p + "cross_attn." + m)
        keys |= {p + "self_attn.in_proj_weight", p + "self_attn.in_proj_bias"} | _wb(p + "self_attn.out_proj")
        for m in ("norm1", "norm2", "norm3", "linear1", "linear2"):
            keys |= _wb(p + m)
    if two_stage:
        for m in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm"):
            keys |= _wb("transformer." + m)
    else:
        keys |= _wb("transformer.reference_points")
        keys.add("query_embed.weight")
    num_pred = num_dec + int(two_stage)
    for i in range(num_pred):
        heads = _wb(f"class_embed.{i}")
        for k in range(3):
            heads |= _wb(f"bbox_embed.{i}.layers.{k}")
        keys |= heads
        if refine:
            keys |= {"transformer.decoder." + h for h in heads if h.startswith("bbox_embed")}
        if two_stage:
            keys |= {"transformer.decoder." + h for h in heads if h.startswith("class_embed")}
    return keys


def _hf_deformable(num_feature_levels=4, **kwargs):
    out_features = ["stage2", "stage3", "stage4"] if num_feature_levels > 1 else ["stage4"]
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=out_features, **BACKBONE),
        use_timm_backbone=False, num_feature_levels=num_feature_levels, two_stage_num_proposals=10,
        **TINY, **kwargs,
    )
    torch.manual_seed(0)
    return transformers.DeformableDetrForObjectDetection(config).eval()


@pytest.mark.parametrize("variant", list(DEFORMABLE_VARIANTS))
def test_hf_deformable_names_are_official(variant):
    kwargs = DEFORMABLE_VARIANTS[variant]
    model = _hf_deformable(**kwargs)
    hf = model.state_dict()
    official = hf_to_official_deformable_detr(hf)
    levels = kwargs.get("num_feature_levels", 4)
    expected = official_deformable_keys(
        1, 2, levels, 3 if levels > 1 else 1, kwargs.get("two_stage", False), kwargs.get("with_box_refine", False)
    )
    assert set(official) == expected

    # values: spot-check each kind of renaming against the HF module it came from
    torch.testing.assert_close(official["transformer.level_embed"], model.model.level_embed, rtol=0, atol=0)
    layer = model.model.decoder.layers[1]
    fused = official["transformer.decoder.layers.1.self_attn.in_proj_weight"]
    torch.testing.assert_close(
        fused, torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
        rtol=0, atol=0,
    )
    assert torch.equal(official["transformer.decoder.layers.1.norm1.weight"], layer.encoder_attn_layer_norm.weight)
    assert torch.equal(official["transformer.decoder.layers.1.norm2.weight"], layer.self_attn_layer_norm.weight)
    assert torch.equal(official["backbone.0.body.layer3.0.conv2.weight"],
                       model.model.backbone.model.encoder.stages[2].layers[0].layer[1].convolution.weight)
    # nothing lost or invented: the same number of values on both sides (aliases counted once)
    def numel(sd, alias):
        return sum(v.numel() for k, v in sd.items() if not alias(k) and "num_batches_tracked" not in k)

    assert numel(official, lambda k: k.startswith("transformer.decoder.") and "_embed." in k) == numel(
        hf, lambda k: k.startswith("model.decoder.") and "_embed." in k
    )


@pytest.mark.parametrize("variant", ["multi_scale", "box_refine", "two_stage"])
def test_hf_deformable_saved_files_convert_the_same(variant):
    """save_pretrained writes transformers-4 names and drops the copies it declares tied; the
    converter must give the same official state dict from the file as from the live model."""
    model = _hf_deformable(**DEFORMABLE_VARIANTS[variant])
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        from_file = hf_to_official_deformable_detr(load_state_dict(tmp))
    from_memory = hf_to_official_deformable_detr(model.state_dict())
    assert set(from_file) == set(from_memory)
    for key in from_memory:
        assert torch.equal(from_file[key], from_memory[key]), key


def official_detr_keys(num_enc, num_dec):
    """The state-dict keys of the official DETR (models/detr.py, transformer.py)."""
    keys = _official_resnet_keys() | _wb("input_proj") | {"query_embed.weight"}
    mha = lambda p: {p + ".in_proj_weight", p + ".in_proj_bias"} | _wb(p + ".out_proj")  # noqa: E731
    for i in range(num_enc):
        p = f"transformer.encoder.layers.{i}."
        keys |= mha(p + "self_attn")
        for m in ("norm1", "norm2", "linear1", "linear2"):
            keys |= _wb(p + m)
    for i in range(num_dec):
        p = f"transformer.decoder.layers.{i}."
        keys |= mha(p + "self_attn") | mha(p + "multihead_attn")
        for m in ("norm1", "norm2", "norm3", "linear1", "linear2"):
            keys |= _wb(p + m)
    keys |= _wb("transformer.decoder.norm") | _wb("class_embed")
    for k in range(3):
        keys |= _wb(f"bbox_embed.layers.{k}")
    return keys


def _hf_detr():
    config = transformers.DetrConfig(
        backbone_config=transformers.ResNetConfig(out_features=["stage4"], **BACKBONE),
        use_timm_backbone=False, **TINY,
    )
    torch.manual_seed(0)
    return transformers.DetrForObjectDetection(config).eval()


def test_hf_detr_names_are_official():
    model = _hf_detr()
    official = hf_to_official_detr(model.state_dict())
    assert set(official) == official_detr_keys(1, 2)
    layer = model.model.decoder.layers[0]
    torch.testing.assert_close(
        official["transformer.decoder.layers.0.multihead_attn.in_proj_bias"],
        torch.cat([layer.encoder_attn.q_proj.bias, layer.encoder_attn.k_proj.bias, layer.encoder_attn.v_proj.bias]),
        rtol=0, atol=0,
    )
    assert official["class_embed.weight"].shape == (TINY["num_labels"] + 1, TINY["d_model"])
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        from_file = hf_to_official_detr(load_state_dict(tmp))
    assert set(from_file) == set(official)
    assert all(torch.equal(from_file[k], official[k]) for k in official)


def test_unknown_hf_key_is_named():
    sd = _hf_detr().state_dict()
    sd["model.decoder.layers.0.adapter.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match=r"model\.decoder\.layers\.0\.adapter\.weight"):
        hf_to_official_detr(sd)


def test_hub_timm_backbone_names():
    """The hub checkpoints (SenseTime/deformable-detr*, facebook/detr-*) were saved with a timm
    ResNet, whose names are torchvision's, under model.backbone.conv_encoder.model."""
    from detrex_lite.checkpoint.resnet import hf_resnet_to_torchvision

    model = _hf_deformable()
    hf = model.state_dict()
    prefix = "model.backbone.model."
    backbone = {k[len(prefix):]: v for k, v in hf.items() if k.startswith(prefix)}
    hub = {k: v for k, v in hf.items() if not k.startswith(prefix)}
    hub.update({"model.backbone.conv_encoder.model." + k: v for k, v in hf_resnet_to_torchvision(backbone).items()})
    assert "model.backbone.conv_encoder.model.layer1.0.downsample.1.running_mean" in hub
    from_hub = hf_to_official_deformable_detr(hub)
    reference = hf_to_official_deformable_detr(hf)
    assert set(from_hub) == set(reference)
    assert all(torch.equal(from_hub[k], reference[k]) for k in reference)
