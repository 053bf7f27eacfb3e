"""Tiny versions of the shipped Deformable DETR / DETR configs for the tools' tests.

The real configs are loaded and shrunk (ResNet-18 at 1/8 width, d_model 32, one encoder and one
decoder layer, a few queries) so that a forward pass on a 64-128 px image takes milliseconds
on CPU, while every code path of the real model (multi-scale deformable attention, box
refinement, two-stage proposals) is kept.
"""
import os

from detectron2.config import LazyConfig

from detrex_lite.config import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFORMABLE_DETR_MODEL = os.path.join(REPO, "projects/deformable_detr/configs/models/deformable_detr_r50.py")
DETR_MODEL = os.path.join(REPO, "projects/detr/configs/models/detr_r50.py")

STEM = 8  # ResNet-18 stage widths: res3 16, res4 32, res5 64 channels


def tiny_deformable_detr_config(variant: str = "one_stage", num_classes: int = 6, num_queries: int = 12):
    """A full LazyConfig (model + demo test data + train) for a tiny Deformable DETR.

    Args:
        variant: "one_stage", "box_refine" or "two_stage" (two-stage with box refinement).
    """
    cfg = LazyConfig.load(DEFORMABLE_DETR_MODEL)
    model = cfg.model
    model.backbone.depth = 18
    model.backbone.stem_out_channels = STEM
    model.backbone.freeze_at = 0
    for name, channels in (("res3", 2 * STEM), ("res4", 4 * STEM), ("res5", 8 * STEM)):
        model.neck.input_shapes[name].channels = channels
    model.neck.num_groups = 4
    t = model.transformer
    t.d_model, t.nhead, t.dim_feedforward = 32, 2, 64
    t.num_encoder_layers = t.num_decoder_layers = 1
    t.num_feature_levels, t.enc_n_points, t.dec_n_points = 4, 2, 2
    t.dropout = 0.0
    model.position_embedding.num_pos_feats = 16
    model.num_classes = num_classes
    model.num_queries = num_queries
    model.select_box_nums_for_evaluation = 10
    model.with_box_refine = variant in ("box_refine", "two_stage")
    model.as_two_stage = variant == "two_stage"

    _tiny_data_and_train(cfg)
    return cfg


def tiny_detr_config(num_classes: int = 6, num_queries: int = 12):
    """A full LazyConfig (model + demo test data + train) for a tiny DETR."""
    cfg = LazyConfig.load(DETR_MODEL)
    model = cfg.model
    model.backbone.depth = 18
    model.backbone.stem_out_channels = STEM
    model.backbone.freeze_at = 0
    t = model.transformer
    t.d_model, t.nhead, t.dim_feedforward = 32, 2, 64
    t.num_encoder_layers = t.num_decoder_layers = 1
    t.dropout = 0.0
    model.position_embedding.num_pos_feats = 16
    model.num_classes = num_classes
    model.num_queries = num_queries
    model.select_box_nums_for_evaluation = 10
    _tiny_data_and_train(cfg)
    return cfg


def _tiny_data_and_train(cfg) -> None:
    cfg.dataloader = get_config("common/data/demo_detr.py").dataloader
    cfg.dataloader.test.mapper.augmentation.min_size = 64
    cfg.dataloader.test.mapper.augmentation.max_size = 96
    cfg.optimizer = get_config("common/optim.py").AdamW
    cfg.train = get_config("common/train.py").train
    cfg.train.init_checkpoint = ""


def save_config(cfg, path: str) -> str:
    """Writes ``cfg`` as a LazyConfig YAML that ``--config-file`` and ``Predictor`` accept."""
    LazyConfig.save(cfg, path)
    return path


def load_tool(name: str):
    """Imports ``tools/<name>.py`` as a module (tools/ is not a package)."""
    import importlib.util

    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"detrex_lite_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
