"""tools/convert_checkpoint.py --check-config: the converted weights are loaded strictly into the
config's model by the shared loader, and a mismatch names the config option behind it (box
refinement, two-stage, levels, layers, queries, hidden size, classes); a failed check leaves no
output file and ends in one line. Converted weights carry run metadata (architecture, COCO names)."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_convert_parity import randomize  # noqa: E402
from tools_tiny_models import load_tool, save_config, tiny_deformable_detr_config  # noqa: E402

# The HF model of tests/tools_tiny_models.py's tiny config (ResNet-18 at 1/8 width), with box
# refinement and two decoder layers (with one layer both variants are the same function).
MATCHING = ["model.transformer.num_decoder_layers=2", "model.with_box_refine=True"]


def _hf_tiny(num_labels=6):
    config = transformers.DeformableDetrConfig(
        backbone_config=transformers.ResNetConfig(
            out_features=["stage2", "stage3", "stage4"], layer_type="basic", embedding_size=8,
            hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
        ),
        use_timm_backbone=False, d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=12,
        two_stage_num_proposals=12, num_labels=num_labels, num_feature_levels=4, encoder_n_points=2,
        decoder_n_points=2, with_box_refine=True, two_stage=False, dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config)
    randomize(model)
    return model


def _tool_lines(err: str):
    """The tool's own lines on stderr (log handlers that other in-process tests attached may
    write there too)."""
    return [line for line in err.splitlines() if line.startswith("convert_checkpoint:")]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    _hf_tiny().save_pretrained(folder / "refine")
    save_config(tiny_deformable_detr_config("one_stage"), str(folder / "tiny_plain.yaml"))
    return folder


def test_matching_config_passes_and_metadata_is_written(hf_dir, tmp_path):
    out = tmp_path / "out.pth"
    assert load_tool("convert_checkpoint").main(
        [str(hf_dir / "refine"), str(out), "--check-config", str(hf_dir / "tiny_plain.yaml"), *MATCHING]
    ) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["arch"] == {
        "meta_architecture": "DeformableDETR", "with_box_refine": True, "as_two_stage": False,
        "num_feature_levels": 4, "num_encoder_layers": 1, "num_decoder_layers": 2, "num_queries": 12,
        "d_model": 32, "num_classes": 6,
    }
    assert "thing_classes" not in meta  # 6 classes: not COCO's
    assert meta["test_resize"] == {"short_edge_length": [800], "max_size": 1333}


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["model.transformer.num_decoder_layers=2"], "the checkpoint was trained with model.with_box_refine=True, the config has False"),
        ([*MATCHING, "model.as_two_stage=True"], "model.as_two_stage=False, the config has True"),
        ([*MATCHING, "model.transformer.num_feature_levels=3"], "model.transformer.num_feature_levels=4, the config has 3"),
        ([*MATCHING, "model.transformer.num_encoder_layers=2"], "model.transformer.num_encoder_layers=1, the config has 2"),
        (["model.with_box_refine=True"], "model.transformer.num_decoder_layers=2, the config has 1"),
        ([*MATCHING, "model.num_queries=20"], "model.num_queries=12, the config has 20"),
        ([*MATCHING, "model.transformer.d_model=48"],
         "model.transformer.d_model=32, the config has 48"),
        ([*MATCHING, "model.num_classes=5"], "the checkpoint has 6 classes, the config 5 (set model.num_classes=6"),
    ],
    ids=["box_refine", "two_stage", "levels", "encoder_layers", "decoder_layers", "queries", "hidden_size", "classes"],
)
def test_mismatch_names_the_option_and_leaves_no_file(hf_dir, tmp_path, capsys, overrides, says):
    out = tmp_path / "out.pth"
    rc = load_tool("convert_checkpoint").main(
        [str(hf_dir / "refine"), str(out), "--check-config", str(hf_dir / "tiny_plain.yaml"), *overrides]
    )
    lines = _tool_lines(capsys.readouterr().err)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"convert_checkpoint: error: {out} does not fit the model (eval): "), lines
    assert says in lines[0], lines
    assert not os.listdir(tmp_path)


def test_unreadable_input_is_one_line(tmp_path, capsys):
    (tmp_path / "in.pth").write_text("<html>404</html>\n")
    rc = load_tool("convert_checkpoint").main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth")])
    assert rc == 1 and _tool_lines(capsys.readouterr().err) == [
        f"convert_checkpoint: error: {tmp_path / 'in.pth'}: is a text file, not a checkpoint (it starts with "
        "'<html>404</html>', a web page: the download failed); expected a .pth written by tools/train_net.py or tools/convert_checkpoint.py "
        "(torch.save of a state dict, possibly under 'model')"
    ]
    assert sorted(os.listdir(tmp_path)) == ["in.pth"]


def test_coco_weights_get_coco_class_names(tmp_path):
    """91 COCO-id logits -> 80 classes, with detectron2's COCO names and ids in the metadata, which
    Predictor uses for drawing without any dataset registered."""
    from detrex_lite.checkpoint.run import metadata_from_meta

    _hf_tiny(num_labels=91).save_pretrained(tmp_path / "coco")
    out = tmp_path / "coco.pth"
    assert load_tool("convert_checkpoint").main([str(tmp_path / "coco"), str(out)]) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["num_classes"] == 80 and len(meta["thing_classes"]) == 80
    assert meta["thing_classes"][:3] == ["person", "bicycle", "car"]
    assert meta["thing_dataset_id_to_contiguous_id"][90] == 79
    assert metadata_from_meta(meta).thing_classes[0] == "person"
