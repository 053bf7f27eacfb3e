"""Shared checks for config tests: a LazyConfig survives save -> load unchanged and builds the same
model; a recipe's common keys; the lr of every parameter; a model built from a config runs at the
original size."""
import os
from typing import Dict, List

import torch
from detectron2.config import LazyConfig, instantiate


def save_and_reload(cfg, tmp_path):
    """Saves `cfg` as YAML, loads it back, and asserts that saving the reloaded config writes the
    same text (no lambdas lost, interpolations intact). Returns the reloaded config."""
    saved, again = tmp_path / "config.yaml", tmp_path / "again.yaml"
    LazyConfig.save(cfg, str(saved))
    reloaded = LazyConfig.load(str(saved))
    LazyConfig.save(reloaded, str(again))
    assert saved.read_text() == again.read_text()
    return reloaded


def coco_models_before_and_after_reload(cfg, tmp_path, model_class: type) -> List[torch.nn.Module]:
    """:func:`save_and_reload`, then ``cfg.model`` instantiated from the config and from its
    reloaded copy (seed 0 each), each checked to be a ``model_class`` with 80 classes in the model
    and its criterion (from coco_2017_train's metadata). Returns the two models."""
    reloaded = save_and_reload(cfg, tmp_path)
    models = []
    for c in (cfg, reloaded):
        torch.manual_seed(0)
        model = instantiate(c.model)
        assert isinstance(model, model_class)
        assert model.num_classes == 80  # from coco_2017_train's metadata
        assert model.criterion.num_classes == 80
        models.append(model)
    return models


def check_recipe_keys(cfg, path: str, depth: int, dilation: int) -> None:
    """The top-level keys of a training recipe, its backbone depth and res5 dilation, and an
    output folder named after the config file."""
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg.keys())
    assert cfg.model.backbone.depth == depth and cfg.model.backbone.res5_dilation == dilation
    assert cfg.train.output_dir.endswith(os.path.basename(path)[: -len(".py")])


def param_lrs(cfg, model) -> Dict[int, float]:
    """Instantiates ``cfg.optimizer`` for ``model``; returns {id(parameter): its group's lr}."""
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


def check_runs_at_original_size(model) -> None:
    """In eval mode, a 70 x 90 image whose original size is 140 x 180 gives 5 detections at
    140 x 180 (the configs are shrunk to select_box_nums_for_evaluation=5)."""
    model.eval()
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 140, "width": 180}])
    assert out["instances"].image_size == (140, 180) and len(out["instances"]) == 5
