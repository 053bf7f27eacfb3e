"""Every shipped DINO config loads, instantiates a tiny model, has the paper's recipe and survives
save -> load; the demo config trains one step, predicts, and is matched to the Deformable DETR
demo; the three switches work as command-line overrides."""
import glob
import math
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import get_detection_dataset_dicts

import detrex_lite.data  # noqa: F401  (registers the demo datasets)
from detrex_lite.config import shrink_model
from detrex_lite.solver import epochs_to_iters
from projects.dino.modeling import DINO
from tests.config_roundtrip import save_and_reload
from tests.test_demo_configs import as_plain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "projects", "dino", "configs")
TOP_LEVEL = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")) if "_demo" not in os.path.basename(p))
DEMO = os.path.join(CONFIG_DIR, "dino_r18_demo.py")
DDETR_DEMO = os.path.join(REPO, "projects/deformable_detr/configs/deformable_detr_r18_demo.py")

# file -> (depth, epochs, lr drop epoch)
EXPECTED = {
    "dino_r50_4scale_12ep.py": (50, 12, 11),
    "dino_r50_4scale_24ep.py": (50, 24, 20),
    "dino_r50_4scale_36ep.py": (50, 36, 30),
    "dino_r101_4scale_12ep.py": (101, 12, 11),
}
LOSSES = ("class", "bbox", "giou")


def test_every_variant_is_shipped():
    assert sorted(os.path.basename(p) for p in TOP_LEVEL) == sorted(EXPECTED)


@pytest.mark.parametrize("path", TOP_LEVEL, ids=os.path.basename)
def test_coco_config_recipe_instantiates_and_round_trips(path, tmp_path):
    depth, epochs, drop = EXPECTED[os.path.basename(path)]
    cfg = LazyConfig.load(path)
    m = cfg.model
    # The paper's model: 900 queries, 4 levels, 6 + 6 layers, FFN 2048, dropout 0, temperature
    # 20, CDN 100 / 0.5 / 1.0, loss weights class 1, L1 5, GIoU 2, all three ideas on.
    assert m.backbone.depth == depth and m.num_queries == 900
    t = m.transformer
    assert (t.num_feature_levels, t.num_encoder_layers, t.num_decoder_layers, t.dim_feedforward, t.dropout) == (4, 6, 6, 2048, 0.0)
    assert m.position_embedding.temperature == 20
    assert (m.dn_number, m.label_noise_ratio, m.box_noise_scale) == (100, 0.5, 1.0)
    assert m.mixed_selection and m.look_forward_twice
    assert dict(m.criterion.weight_dict) == {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    # The recipe: batch 16, AdamW 1e-4, weight decay 1e-4, lr x0.1 at the drop epoch.
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.max_iter == epochs_to_iters(epochs, total_batch_size=16)
    schedule = instantiate(cfg.lr_multiplier)
    drop_at = epochs_to_iters(drop, total_batch_size=16) / cfg.train.max_iter
    assert schedule(drop_at - 1e-4) == 1.0 and schedule(drop_at + 1e-4) == pytest.approx(0.1)
    assert cfg.train.output_dir.endswith(os.path.basename(path)[: -len(".py")])

    shrink_model(
        cfg.model, stem_out_channels=8, num_groups=8, d_model=32, nhead=4, num_layers=1, dim_feedforward=64,
        num_queries=6, select_box_nums_for_evaluation=5,
    )
    reloaded = save_and_reload(cfg, tmp_path)
    for c in (cfg, reloaded):
        torch.manual_seed(0)
        model = instantiate(c.model)
        assert isinstance(model, DINO)
        assert model.num_classes == 80 and model.criterion.num_classes == 80
        assert model.transformer.enc_out_class_embed.out_features == 80
        assert len(model.feature_strides) == 4 and model.feature_strides[0] == 8

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    lr_by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_by_param[id(named["backbone.res5.0.conv1.weight"])] == pytest.approx(1e-5)
    assert lr_by_param[id(named["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"])] == pytest.approx(1e-5)
    for name in ("class_embed.0.weight", "label_enc.weight", "transformer.tgt_embed.weight", "transformer.decoder.ref_point_head.layers.0.weight"):
        assert lr_by_param[id(named[name])] == pytest.approx(1e-4), name


@pytest.mark.parametrize(
    "override, attribute, value",
    [("model.dn_number=0", "dn_number", 0), ("model.mixed_selection=False", "mixed_selection", False),
     ("model.look_forward_twice=False", "look_forward_twice", False)],
)
def test_switches_are_command_line_overrides(override, attribute, value):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(DEMO), [override])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert getattr(model, attribute) == value
    if attribute != "dn_number":  # the transformer follows through interpolation
        assert getattr(model.transformer, attribute) == value
    assert hasattr(model.transformer, "tgt_embed") == (attribute != "mixed_selection")
    assert model.transformer.decoder.look_forward_twice == (attribute != "look_forward_twice")


def test_demo_config_trains_one_step_and_predicts():
    cfg = LazyConfig.load(DEMO)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert model.num_classes == 6 and model.device.type == "cpu"
    records = get_detection_dataset_dicts("detrex_demo_train", filter_empty=True)[:2]
    batch = [instantiate(cfg.dataloader.train.mapper)(dict(r)) for r in records]
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    losses = model(batch)
    stages = ["", "_0", "_1", "_enc", "_dn", "_dn_0", "_dn_1"]
    assert set(losses) == {f"loss_{k}{s}" for k in LOSSES for s in stages}
    assert all(math.isfinite(v.item()) and v.item() >= 0 for v in losses.values())
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert next(n for n in before if n.startswith("backbone.stem")) in changed
    assert {"label_enc.weight", "transformer.tgt_embed.weight"} <= changed
    assert len(changed) > 0.9 * len(before)

    val = get_detection_dataset_dicts("detrex_demo_val", filter_empty=False)[:2]
    inputs = [instantiate(cfg.dataloader.test.mapper)(dict(r)) for r in val]
    model.eval()
    with torch.no_grad():
        outputs = model(inputs)
    for record, output in zip(val, outputs):
        inst = output["instances"]
        assert inst.image_size == (record["height"], record["width"])
        assert len(inst) == 50
        assert torch.isfinite(inst.pred_boxes.tensor).all()


def test_demo_config_survives_save_and_load(tmp_path):
    cfg = LazyConfig.load(DEMO)
    reloaded = save_and_reload(cfg, tmp_path)
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert as_plain(reloaded[key]) == as_plain(cfg[key]), key


def test_demo_config_is_matched_to_the_deformable_detr_demo():
    dino, dd = LazyConfig.load(DEMO), LazyConfig.load(DDETR_DEMO)
    for key in ("depth", "stem_out_channels", "freeze_at", "norm", "stride_in_1x1", "res5_dilation", "out_features"):
        assert as_plain(dino.model.backbone[key]) == as_plain(dd.model.backbone[key]), key
    for key in ("d_model", "nhead", "dim_feedforward", "num_encoder_layers", "num_decoder_layers", "dropout",
                "num_feature_levels", "enc_n_points", "dec_n_points"):
        assert dino.model.transformer[key] == dd.model.transformer[key], key
    assert as_plain(dino.model.neck) == as_plain(dd.model.neck)
    for key in ("select_box_nums_for_evaluation", "aux_loss", "pixel_mean", "pixel_std"):
        assert as_plain(dino.model[key]) == as_plain(dd.model[key]), key
    # Queries scaled as the Deformable DETR demo scales its paper's (300 -> 50): 900 -> 150.
    assert dino.model.num_queries * 300 == dd.model.num_queries * 900
    # Data, batch, iterations, schedule, optimiser, clipping, evaluation points.
    assert as_plain(dino.dataloader) == as_plain(dd.dataloader)
    assert as_plain(dino.lr_multiplier) == as_plain(dd.lr_multiplier)
    assert as_plain(dino.optimizer) == as_plain(dd.optimizer)
    for key in ("max_iter", "eval_period", "clip_grad", "checkpointer", "log_period", "seed", "device", "amp", "model_ema"):
        assert as_plain(dino.train[key]) == as_plain(dd.train[key]), key
    assert dino.train.output_dir != dd.train.output_dir
