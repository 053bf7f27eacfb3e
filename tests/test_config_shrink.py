"""Each fact once in the model configs: the neck's input shapes follow the backbone, the position
embedding's width follows d_model, and shrink_model is the one way to make a smaller model."""
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detrex_lite.config import shrink_model
from detrex_lite.modeling import build_resnet, resnet_output_shape

from config_roundtrip import save_and_reload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFORMABLE = os.path.join(REPO, "projects/deformable_detr/configs/models/deformable_detr_r50.py")
DETR = os.path.join(REPO, "projects/detr/configs/models/detr_r50.py")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=18, stem_out_channels=8, out_features=["res2", "res3", "res4", "res5"]),
        dict(depth=50, stem_out_channels=16, out_features=["stem", "res3", "res5"]),
        dict(depth=50, stem_out_channels=8, out_features=["res4", "res5"], res5_dilation=2),
        dict(depth=34, stem_out_channels=8, out_features=["res5"]),
    ],
)
def test_resnet_output_shape_equals_the_built_backbone(kwargs):
    # The built network computes its own output shapes (detectron2's ResNet): an independent check.
    assert resnet_output_shape(**kwargs) == build_resnet(**kwargs).output_shape()


def test_resnet_output_shape_rejects_unknown_stage_and_dc5_on_basic_blocks():
    with pytest.raises(ValueError, match="res6"):
        resnet_output_shape(out_features=["res6"])
    with pytest.raises(ValueError, match="DC5"):
        resnet_output_shape(depth=18, res5_dilation=2)


def test_neck_follows_the_backbone_and_embedding_follows_d_model(tmp_path):
    cfg = LazyConfig.load(DEFORMABLE)
    cfg.model.backbone.update(depth=18, stem_out_channels=8, out_features=["res4", "res5"], res5_dilation=1)
    cfg.model.transformer.update(d_model=32, nhead=2, num_feature_levels=3, num_encoder_layers=1, num_decoder_layers=1)
    cfg.model.neck.num_groups = 4
    reloaded = save_and_reload(cfg, tmp_path)
    for c in (cfg, reloaded):
        model = instantiate(c.model)
        assert model.neck.in_features == ["res4", "res5"]
        assert [p[0].in_channels for p in model.neck.input_proj] == [32, 64, 64]
        assert model.feature_strides == [16, 32, 64]
        assert model.position_embedding.num_pos_feats == 16


def test_shrink_model_sets_sizes_and_refuses_fields_a_model_lacks():
    cfg = LazyConfig.load(DEFORMABLE)
    model = shrink_model(
        cfg.model, depth=18, stem_out_channels=8, freeze_at=0, num_groups=4, d_model=32, nhead=2,
        dim_feedforward=64, num_layers=1, num_points=2, dropout=0.0, num_queries=7,
    )
    assert model is cfg.model and model.select_box_nums_for_evaluation == 7
    torch.manual_seed(0)
    built = instantiate(model)
    layer = built.transformer.encoder.layers[0]
    assert (layer.self_attn.embed_dim, layer.self_attn.num_heads, layer.self_attn.num_points) == (32, 2, 2)
    assert layer.linear1.out_features == 64 and len(built.transformer.decoder.layers) == 1
    assert built.query_embed.num_embeddings == 7 and built.neck.input_proj[0][1].num_groups == 4

    detr = LazyConfig.load(DETR)
    with pytest.raises(KeyError, match="enc_n_points"):
        shrink_model(detr.model, d_model=32, nhead=2, dim_feedforward=64, num_layers=1, num_queries=5, num_points=2)
    with pytest.raises(KeyError, match="neck"):
        shrink_model(detr.model, d_model=32, nhead=2, dim_feedforward=64, num_layers=1, num_queries=5, num_groups=4)
    # A refused call changes nothing.
    assert (detr.model.transformer.d_model, detr.model.num_queries) == (256, 100)
