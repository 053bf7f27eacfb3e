"""Every shipped Deformable DETR config loads, instantiates, runs and survives save -> load."""
import glob
import os

import pytest
from detectron2.config import LazyConfig, instantiate

from detrex_lite.config import shrink_model
from projects.deformable_detr.modeling import DeformableDETR

from config_roundtrip import check_recipe_keys, check_runs_at_original_size, coco_models_before_and_after_reload, param_lrs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "projects", "deformable_detr", "configs")
# The COCO recipes; the *_demo.py configs (synthetic demo data) are tested in test_demo_configs.py.
TOP_LEVEL = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")) if "_demo" not in os.path.basename(p))

# file -> (feature levels, with_box_refine, as_two_stage, depth, res5 dilation)
EXPECTED = {
    "deformable_detr_r50_single_scale_50ep.py": (1, False, False, 50, 1),
    "deformable_detr_r50_single_scale_dc5_50ep.py": (1, False, False, 50, 2),
    "deformable_detr_r50_50ep.py": (4, False, False, 50, 1),
    "deformable_detr_r50_with_box_refinement_50ep.py": (4, True, False, 50, 1),
    "deformable_detr_r50_two_stage_50ep.py": (4, True, True, 50, 1),
    "deformable_detr_r101_50ep.py": (4, False, False, 101, 1),
    "deformable_detr_r101_with_box_refinement_50ep.py": (4, True, False, 101, 1),
    "deformable_detr_r101_two_stage_50ep.py": (4, True, True, 101, 1),
}


def test_every_variant_is_shipped():
    assert sorted(os.path.basename(p) for p in TOP_LEVEL) == sorted(EXPECTED)


def _shrink(cfg):
    """Same structure, tiny sizes: narrow backbone (stem 8: res3/4/5 have 64/128/256 channels
    at depth 50 and 101), d_model 32, one layer each, few queries."""
    shrink_model(
        cfg.model, stem_out_channels=8, num_groups=8, d_model=32, nhead=4, num_layers=1, dim_feedforward=64,
        num_queries=6, select_box_nums_for_evaluation=5,
    )


@pytest.mark.parametrize("path", TOP_LEVEL, ids=os.path.basename)
def test_config_instantiates_runs_and_round_trips(path, tmp_path):
    levels, refine, two_stage, depth, dilation = EXPECTED[os.path.basename(path)]
    cfg = LazyConfig.load(path)
    check_recipe_keys(cfg, path, depth, dilation)
    assert cfg.dataloader.train.total_batch_size == 32

    _shrink(cfg)
    # Saving must keep everything (no lambdas, interpolations intact) and reload equal.
    for model in coco_models_before_and_after_reload(cfg, tmp_path, DeformableDETR):
        assert model.transformer.num_feature_levels == levels and len(model.feature_strides) == levels
        assert model.with_box_refine == refine and model.as_two_stage == two_stage
        assert model.transformer.two_stage == two_stage
        assert model.feature_strides[0] == (8 if levels == 4 else 32 // dilation)

    # The optimizer config builds lr groups from the model's parameter names.
    lr_by_param = param_lrs(cfg, model)
    named = dict(model.named_parameters())
    base = cfg.optimizer.lr
    assert lr_by_param[id(named["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"])] == pytest.approx(0.1 * base)
    assert lr_by_param[id(named["backbone.res5.0.conv1.weight"])] == pytest.approx(0.1 * base)
    assert lr_by_param[id(named["class_embed.0.weight"])] == pytest.approx(base)
    if not two_stage:
        assert lr_by_param[id(named["transformer.reference_points.weight"])] == pytest.approx(0.1 * base)

    check_runs_at_original_size(model)


def test_r50_model_config_has_paper_size():
    # Paper Table 1: Deformable DETR (R50, multi-scale) has 40M parameters.
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "models", "deformable_detr_r50.py"))
    model = instantiate(cfg.model)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 40
    assert model.num_queries == 300 and model.select_box_nums_for_evaluation == 100
    layer = model.transformer.encoder.layers[0].self_attn
    assert (layer.num_heads, layer.num_levels, layer.num_points) == (8, 4, 4)
    assert len(model.transformer.encoder.layers) == len(model.transformer.decoder.layers) == 6
    assert model.transformer.encoder.layers[0].linear1.out_features == 1024
