"""The two out-of-the-box demo configs (Deformable DETR and its matched DETR): they load, build,
train one step and predict on demo images, survive LazyConfig.save -> load, and really are
matched (everything but the detector-specific parts is equal)."""
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

import detrex_lite.data  # noqa: F401  (registers the demo datasets)
from tests.tools_tiny_models import REPO

CONFIGS = {
    "deformable_detr": os.path.join(REPO, "projects/deformable_detr/configs/deformable_detr_r18_demo.py"),
    "detr": os.path.join(REPO, "projects/detr/configs/detr_r18_demo.py"),
}
EXPECTED_LOSS_KEYS = {
    # 3 decoder layers: final + 2 auxiliary stages (+ nothing for the encoder in one-stage models).
    name: {f"loss_{k}{suffix}" for k in ("class", "bbox", "giou") for suffix in ("", "_0", "_1")}
    for name in CONFIGS
}


def load(name):
    return LazyConfig.load(CONFIGS[name])


def as_plain(node):
    """A plain container; `_target_`s become the objects they name (a loaded YAML holds the
    dotted path where the Python config holds the object itself)."""
    node = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    if isinstance(node, dict):
        return {k: (locate(v) if k == "_target_" and isinstance(v, str) else as_plain(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [as_plain(v) for v in node]
    return node


@pytest.fixture(scope="module")
def demo_records():
    return {
        "train": get_detection_dataset_dicts("detrex_demo_train", filter_empty=True)[:2],
        "val": get_detection_dataset_dicts("detrex_demo_val", filter_empty=False)[:2],
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_demo_config_trains_one_step_and_predicts(name, demo_records):
    cfg = load(name)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert model.num_classes == 6  # from the demo dataset's metadata, not hard-coded
    assert model.device.type == "cpu"

    train_mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [train_mapper(dict(r)) for r in demo_records["train"]]
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    losses = model(batch)
    assert set(losses) == EXPECTED_LOSS_KEYS[name]
    assert all(math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    # The backbone trains from scratch: its first conv must move as well as the heads.
    stem = next(n for n in before if n.startswith("backbone.stem"))
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert stem in changed
    assert len(changed) > 0.9 * len(before)

    test_mapper = instantiate(cfg.dataloader.test.mapper)
    inputs = [test_mapper(dict(r)) for r in demo_records["val"]]
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    for record, output in zip(demo_records["val"], outputs):
        inst = output["instances"]
        assert inst.image_size == (record["height"], record["width"])
        assert len(inst) == cfg.model.select_box_nums_for_evaluation
        boxes = inst.pred_boxes.tensor
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 2] <= record["width"] + 1e-3).all()
        assert (boxes[:, 1] >= -1e-3).all() and (boxes[:, 3] <= record["height"] + 1e-3).all()
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 6)).all()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_demo_config_survives_save_and_load(name, tmp_path):
    cfg = load(name)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    reloaded = LazyConfig.load(path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert as_plain(reloaded[key]) == as_plain(cfg[key]), key
    assert instantiate(reloaded.lr_multiplier)(0.5) == instantiate(cfg.lr_multiplier)(0.5)


def test_demo_configs_are_matched():
    dd, detr = load("deformable_detr"), load("detr")

    # Backbone: same network, both trained from scratch in the same way.
    for key in ("depth", "stem_out_channels", "freeze_at", "norm", "stride_in_1x1", "res5_dilation"):
        assert dd.model.backbone[key] == detr.model.backbone[key], key
    # Transformer width and depth, queries, detections kept.
    for key in ("d_model", "nhead", "dim_feedforward", "num_encoder_layers", "num_decoder_layers", "dropout"):
        assert dd.model.transformer[key] == detr.model.transformer[key], key
    assert dd.model.position_embedding.embed_dim == detr.model.position_embedding.embed_dim
    for key in ("num_queries", "select_box_nums_for_evaluation", "aux_loss", "pixel_mean", "pixel_std"):
        assert as_plain(dd.model[key]) == as_plain(detr.model[key]), key
    # The ChannelMapper reads the backbone stages at the widths the backbone gives.
    stem = dd.model.backbone.stem_out_channels
    input_shapes = instantiate(dd.model.neck.input_shapes)
    for k, name in enumerate(("res3", "res4", "res5")):
        assert input_shapes[name].channels == stem * 2 ** (k + 1)

    # Data, batch, iterations, schedule shape, optimiser, clipping, evaluation points.
    assert as_plain(dd.dataloader) == as_plain(detr.dataloader)
    assert dd.train.max_iter == detr.train.max_iter
    for key in ("eval_period", "clip_grad", "checkpointer", "log_period", "seed", "device", "amp", "model_ema"):
        assert as_plain(dd.train[key]) == as_plain(detr.train[key]), key
    assert as_plain(dd.lr_multiplier) == as_plain(detr.lr_multiplier)
    schedule = instantiate(dd.lr_multiplier)
    assert schedule(0.5) == 1.0 and schedule(0.9) == pytest.approx(0.1)
    for key in ("betas", "weight_decay"):
        assert as_plain(dd.optimizer[key]) == as_plain(detr.optimizer[key]), key
    # DETR's base lr is deliberately lower (it diverges at Deformable DETR's, docs/demo.md).
    assert detr.optimizer.lr <= dd.optimizer.lr
    # The only lr groups are Deformable DETR's own parameters (no backbone multiplier: no
    # pretrained weights to protect in either model).
    assert "backbone" not in dd.optimizer.params.lr_multipliers
    assert set(detr.optimizer.params.lr_multipliers) == set()

    # Built models: the backbones have the same parameters (names and shapes).
    torch.manual_seed(0)
    dd_backbone = instantiate(dd.model.backbone)
    detr_backbone = instantiate(detr.model.backbone)
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.state_dict().items()}  # noqa: E731
    assert shapes(dd_backbone) == shapes(detr_backbone)

    # Different output folders, so running both keeps both curves.
    assert dd.train.output_dir != detr.train.output_dir
    assert "demo" in dd.train.output_dir and "demo" in detr.train.output_dir


@pytest.mark.parametrize(
    "demo, small",
    [
        ("projects/deformable_detr/configs/deformable_detr_r18_demo.py", "projects/deformable_detr/configs/deformable_detr_r18_demo_100img.py"),
        ("projects/dino/configs/dino_r18_demo.py", "projects/dino/configs/dino_r18_demo_100img.py"),
    ],
)
def test_small_data_demos_change_only_the_training_images(demo, small):
    """The small-data regime (docs/dino.md): the demo's model, schedule, budget and evaluation,
    trained on the first 100 of the 600 training images."""
    from detectron2.config import LazyConfig

    from detrex_lite.data import first_dataset_dicts

    full, cut = (as_plain(LazyConfig.load(os.path.join(REPO, p))) for p in (demo, small))
    assert cut["dataloader"]["train"]["dataset"] == {
        "_target_": first_dataset_dicts, "names": "detrex_demo_train", "num_images": 100,
    }
    for c in (full, cut):
        del c["dataloader"]["train"]["dataset"], c["train"]["output_dir"]
    assert cut == full
    records = first_dataset_dicts("detrex_demo_train", 100)
    assert len(records) == 100 and [r["image_id"] for r in records] == sorted(r["image_id"] for r in records)
