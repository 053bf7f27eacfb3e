"""DINO through the unchanged tools: the engine's training loop and evaluation, the run folder and
the Predictor, and ONNX export of the inference graph (no denoising) checked with onnxruntime."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from detrex_lite.engine import do_test, do_train
from detrex_lite.export.onnx_export import check_onnx_parity, export_onnx, prepare_export_inputs
from detrex_lite.predictor import Predictor
from detrex_lite.solver import default_detr_schedule
from tests.dino_tiny_model import tiny_dino_config
from detrex_lite.data import first_dataset_dicts
from tests.tools_tiny_models import save_config

CANVAS = (96, 96)


def _eval_model(**kwargs):
    torch.manual_seed(0)
    model = instantiate(tiny_dino_config(**kwargs).model).eval()
    # Spread the class scores (the focal prior makes them all ~0.01): distinct top-k scores.
    for name, p in model.named_parameters():
        if "class_embed" in name and name.endswith("bias"):
            torch.nn.init.normal_(p, std=2.0)
    return model


def _images(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def test_train_then_evaluate_through_the_engine(tmp_path):
    cfg = tiny_dino_config()
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.mapper.augmentation.min_sizes = [64, 80]
    cfg.dataloader.train.mapper.augmentation.max_size = 96
    cfg.dataloader.train.mapper.augmentation_with_crop.crop_pre_resize_sizes = [64, 80]
    cfg.dataloader.train.mapper.augmentation_with_crop.crop_size = [48, 64]
    cfg.dataloader.test.dataset = L(first_dataset_dicts)(names="detrex_demo_val", num_images=4)
    cfg.lr_multiplier = default_detr_schedule(epochs=2, decay_epochs=1, total_batch_size=2, num_images=4)
    cfg.train.update(max_iter=4, device="cpu", seed=0, log_period=1, eval_period=0, output_dir=str(tmp_path / "run"))
    cfg.train.checkpointer = dict(period=4, max_to_keep=2)
    os.makedirs(cfg.train.output_dir)
    save_config(cfg, os.path.join(cfg.train.output_dir, "config.yaml"))  # what train_net writes
    trainer = do_train(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.json") if "total_loss" in line]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert {"loss_class_dn", "loss_bbox_enc", "loss_giou_dn_0"} <= set(rows[0])
    assert all(np.isfinite(r["total_loss"]) for r in rows)
    ckpt = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    assert ckpt["model"]["class_embed.0.weight"].shape[0] == 6
    model = trainer.model.eval()
    with torch.no_grad():
        results = do_test(cfg, model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}

    # The run folder gives a Predictor (config + final checkpoint), strict load, same outputs.
    predictor = Predictor.from_run(str(tmp_path / "run"), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    out = predictor(image)
    assert out.image_size == (70, 90) and len(out) == 10
    torch.testing.assert_close(predictor.model.state_dict()["label_enc.weight"], ckpt["model"]["label_enc.weight"])


def test_predictor_with_a_config_and_checkpoint(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = tiny_dino_config()
    model = _eval_model()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    predictor = Predictor(save_config(cfg, str(tmp_path / "tiny.yaml")), str(tmp_path / "model_final.pth"), device="cpu")
    bgr = np.random.default_rng(1).integers(0, 256, (80, 64, 3), dtype=np.uint8)
    out = predictor(bgr)
    # The same as the model on the resized RGB image.
    inputs = [predictor.preprocess(bgr[:, :, ::-1].copy())]
    assert (inputs[0]["height"], inputs[0]["width"]) == (80, 64)
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
    torch.testing.assert_close(out.scores, expected.scores)
    torch.testing.assert_close(out.pred_boxes.tensor, expected.pred_boxes.tensor)


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [True, False])
def test_onnx_export_matches_onnxruntime(mixed, tmp_path):
    model = _eval_model(mixed_selection=mixed)
    path = str(tmp_path / "dino.onnx")
    wrapper = export_onnx(model, path, CANVAS, output="raw", sample_batch_size=1)
    batches = [(CANVAS, _images([(96, 72), (64, 90)], 0)), ((80, 112), _images([(80, 112), (60, 90)], 1))]
    for canvas, batch in batches:
        images, sizes = prepare_export_inputs(model, batch, canvas)
        diffs = check_onnx_parity(path, wrapper, images, sizes, atol=1e-4)
        assert diffs["ok"], (canvas, diffs)
    path = str(tmp_path / "dino_det.onnx")
    wrapper = export_onnx(model, path, CANVAS, output="detections")
    images, sizes = prepare_export_inputs(model, _images([(96, 80)], 2), CANVAS)
    diffs = check_onnx_parity(path, wrapper, images, sizes, atol=1e-3)
    assert diffs["ok"] and diffs["scores"] < 1e-5, diffs


def test_cpu_inference_mode_fp32_equals_eager_and_bf16_runs():
    from detrex_lite.inference import optimize_for_inference

    model = _eval_model()
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in _images([(96, 80), (72, 100)], 3)]
    with torch.no_grad():
        expected = model(inputs)
        got = optimize_for_inference(model, "fp32")(inputs)
        fast_bf16 = optimize_for_inference(model, "bf16", force_bf16=True)
        got_bf16 = fast_bf16(inputs)
    for e, g in zip(expected, got):
        e, g = e["instances"], g["instances"]
        torch.testing.assert_close(g.scores, e.scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g.pred_boxes.tensor, e.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    # bf16: the heads that rank the encoder tokens and place the anchors stay float32 (as two-stage
    # Deformable DETR, the hard top-k selection is not compared on a random model).
    assert fast_bf16.inference_precision == "bf16"
    assert fast_bf16.transformer.enc_out_class_embed.weight.dtype == torch.float32
    assert fast_bf16.transformer.encoder.layers[0].linear1.weight.dtype == torch.bfloat16
    assert all(len(r["instances"]) == 10 and r["instances"].scores.dtype == torch.float32 for r in got_bf16)
