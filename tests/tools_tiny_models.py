"""Tiny versions of the shipped Deformable DETR / DETR configs for the tools' tests.

The real configs are loaded and shrunk (ResNet-18 at 1/8 width, d_model 32, one encoder and one
decoder layer, a few queries) so that a forward pass on a 64-128 px image takes milliseconds
on CPU, while every code path of the real model (multi-scale deformable attention, box
refinement, two-stage proposals) is kept.
"""
import logging
import os

from detectron2.config import LazyConfig

from detrex_lite.config import get_config, shrink_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFORMABLE_DETR_MODEL = os.path.join(REPO, "projects/deformable_detr/configs/models/deformable_detr_r50.py")
DETR_MODEL = os.path.join(REPO, "projects/detr/configs/models/detr_r50.py")

# ResNet-18 at 1/8 width (res3/res4/res5: 16/32/64 channels), d_model 32, one layer each.
TINY = dict(depth=18, stem_out_channels=8, freeze_at=0, d_model=32, nhead=2, dim_feedforward=64, num_layers=1, dropout=0.0)


def tiny_deformable_detr_config(variant: str = "one_stage", num_classes: int = 6, num_queries: int = 12):
    """A full LazyConfig (model + demo test data + train) for a tiny Deformable DETR.

    Args:
        variant: "one_stage", "box_refine" or "two_stage" (two-stage with box refinement).
    """
    cfg = LazyConfig.load(DEFORMABLE_DETR_MODEL)
    model = shrink_model(
        cfg.model, **TINY, num_groups=4, num_points=2, num_queries=num_queries, select_box_nums_for_evaluation=10
    )
    model.num_classes = num_classes
    model.with_box_refine = variant in ("box_refine", "two_stage")
    model.as_two_stage = variant == "two_stage"

    tiny_data_and_train(cfg)
    return cfg


def tiny_detr_config(num_classes: int = 6, num_queries: int = 12):
    """A full LazyConfig (model + demo test data + train) for a tiny DETR."""
    cfg = LazyConfig.load(DETR_MODEL)
    model = shrink_model(cfg.model, **TINY, num_queries=num_queries, select_box_nums_for_evaluation=10)
    model.num_classes = num_classes
    tiny_data_and_train(cfg)
    return cfg


def tiny_data_and_train(cfg) -> None:
    """Gives a model-only LazyConfig the demo data (64-96 px test images), AdamW and the common
    train section, with no initial checkpoint."""
    cfg.dataloader = get_config("common/data/demo_detr.py").dataloader
    cfg.dataloader.test.mapper.augmentation.min_size = 64
    cfg.dataloader.test.mapper.augmentation.max_size = 96
    cfg.optimizer = get_config("common/optim.py").AdamW
    cfg.train = get_config("common/train.py").train
    cfg.train.init_checkpoint = ""


def save_tiny_checkpoint(cfg, root: str, class_bias_std: float):
    """Builds ``cfg.model`` (seed 0), draws the class heads' biases from N(0, class_bias_std) so
    that the scores spread (top-k order and thresholds are not near-ties), and saves it as
    ``root/model_final.pth``. Returns the model."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    torch.manual_seed(0)
    model = instantiate(cfg.model)
    for head in model.class_embed:
        torch.nn.init.normal_(head.bias, std=class_bias_std)
    DetectionCheckpointer(model, save_dir=str(root)).save("model_final")
    return model


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


class LogRecords(logging.Handler):
    """Collects the messages of the records logged to the loggers it is added to (a tool's own
    logger: detectron2's setup_logger is cached per process and stops propagation, so caplog and
    capsys may miss them)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
