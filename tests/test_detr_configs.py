"""Every shipped DETR config loads, has the paper's recipe, instantiates a (shrunk) model that
runs, and survives LazyConfig save -> load."""
import glob
import os

import pytest
from detectron2.config import LazyConfig, instantiate

from detrex_lite.solver import epochs_to_iters
from projects.detr.modeling import DETR

from config_roundtrip import check_recipe_keys, check_runs_at_original_size, coco_models_before_and_after_reload, param_lrs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "projects", "detr", "configs")
# The COCO recipes; the *_demo.py configs (synthetic demo data) are tested in test_demo_configs.py.
TOP_LEVEL = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")) if not p.endswith("_demo.py"))

# file -> (ResNet depth, res5 dilation, feature stride)
EXPECTED = {
    "detr_r50_500ep.py": (50, 1, 32),
    "detr_r50_dc5_500ep.py": (50, 2, 16),
    "detr_r101_500ep.py": (101, 1, 32),
    "detr_r101_dc5_500ep.py": (101, 2, 16),
}


def test_every_variant_is_shipped():
    assert sorted(os.path.basename(p) for p in TOP_LEVEL) == sorted(EXPECTED)


def _shrink(cfg):
    """Same structure (depth, dilation, heads), tiny widths: stem 8 (res5 has 256 channels at
    depth 50/101), d_model 32, one layer each, few queries."""
    model = cfg.model
    model.backbone.stem_out_channels = 8
    t = model.transformer
    t.d_model, t.nhead, t.num_encoder_layers, t.num_decoder_layers, t.dim_feedforward = 32, 4, 1, 2, 64
    model.num_queries = 6
    model.select_box_nums_for_evaluation = 5


@pytest.mark.parametrize("path", TOP_LEVEL, ids=os.path.basename)
def test_config_recipe_instantiates_runs_and_round_trips(path, tmp_path):
    depth, dilation, stride = EXPECTED[os.path.basename(path)]
    cfg = LazyConfig.load(path)
    check_recipe_keys(cfg, path, depth, dilation)
    # The paper's recipe (Carion et al. 2020, Sec. 4 / A.4).
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert dict(cfg.optimizer.params.lr_multipliers) == {"backbone": 0.1}
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.train.total_batch_size == 64
    assert cfg.train.max_iter == epochs_to_iters(500, total_batch_size=64)
    scheduler = instantiate(cfg.lr_multiplier)
    drop = epochs_to_iters(400, total_batch_size=64) / cfg.train.max_iter
    assert scheduler(0.0) == 1.0 and scheduler(drop - 1e-4) == 1.0
    assert scheduler(drop + 1e-4) == pytest.approx(0.1) and scheduler(0.999) == pytest.approx(0.1)

    _shrink(cfg)
    for model in coco_models_before_and_after_reload(cfg, tmp_path, DETR):
        assert model.class_embed.out_features == 81
        assert model.feature_strides == [stride]
        assert len(model.backbone.res4) == {50: 6, 101: 23}[depth]

    # The optimizer: backbone at 0.1x, everything else at the base lr.
    lr_by_param = param_lrs(cfg, model)
    for name, p in model.named_parameters():
        if p.requires_grad:
            expected = 1e-5 if name.startswith("backbone.") else 1e-4
            assert lr_by_param[id(p)] == pytest.approx(expected), name

    check_runs_at_original_size(model)


def test_r50_model_config_has_paper_size():
    cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "models", "detr_r50.py"))
    model = instantiate(cfg.model)
    # Paper Table 1: DETR (R50) has 41M parameters (the official main.py counts trainable ones).
    assert round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6) == 41
    assert model.num_queries == 100 and model.select_box_nums_for_evaluation == 100
    t = model.transformer
    assert len(t.encoder.layers) == len(t.decoder.layers) == 6
    assert t.encoder.layers[0].self_attn.num_heads == 8 and t.d_model == 256
    assert t.encoder.layers[0].linear1.out_features == 2048
    assert t.encoder.layers[0].dropout.p == 0.1
    assert model.input_proj.in_channels == 2048 and model.input_proj.out_channels == 256
    pe = model.position_embedding
    assert (pe.num_pos_feats, pe.normalize, pe.offset) == (128, True, 0.0)
    crit = model.criterion
    assert crit.loss_class_type == "ce_loss" and crit.eos_coef == 0.1
    assert crit.weight_dict == {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    m = crit.matcher
    assert (m.cost_class, m.cost_bbox, m.cost_giou, m.cost_class_type) == (1.0, 5.0, 2.0, "ce_cost")
    # Official: stem and res2 frozen, the rest of the backbone trains.
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if n.startswith("backbone.") and not p.requires_grad}
    assert frozen == {"stem", "res2"}
