"""The tools default to the display threshold and say which threshold they use and where it came
from: Predictor (and its named detections), demo.py (the checkpoint's stored suggestion, else
0.3 said as a default), visualize_results.py and analyze_results.py (computed from the
predictions and the ground truth); each says so when nothing reaches the threshold."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch

from detrex_lite.analysis.threshold import best_f1_threshold
from detrex_lite.apps import analyze_results, visualize_results
from detrex_lite.predictor import Predictor
from tests.tools_analysis_data import VAL, perturbed_predictions, register_small_demo, write_predictions
from tools_tiny_models import LogRecords, load_tool, save_config, save_tiny_checkpoint, tiny_deformable_detr_config

CLASSES = ["circle", "square", "triangle", "cross", "ring", "bar"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("threshold_tools")
    folder = register_small_demo(str(root))
    gt_json = os.path.join(folder, "annotations", "instances_val.json")
    # Scores as low as a sigmoid-focal DETR's (all below 0.5), and low-scored background boxes.
    results = [dict(r, score=0.5 * r["score"]) for r in perturbed_predictions(gt_json)]
    images = sorted({r["image_id"] for r in results})
    results += [dict(image_id=i, category_id=1, bbox=[0.0, 0.0, 3.0, 3.0], score=0.05 + 0.01 * k)
                for i in images for k in range(3)]
    path = write_predictions(results, str(root / "inference" / VAL / "coco_instances_results.json"))
    with open(gt_json) as f:
        expected = best_f1_threshold(json.load(f)["annotations"], results)
    return path, results, expected


def test_visualize_results_defaults_to_max_f1(evaluated, tmp_path, capsys):
    path, results, expected = evaluated
    assert expected.score not in (0.5, 0.3)  # the test tells the default apart from the old ones
    drawn = visualize_results.run(path, VAL, str(tmp_path / "v"), worst=12)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"score threshold {expected.score:.3g} (max F1 at IoU 0.5 of {path} on {VAL})"
    # the matching counted exactly the predictions at or above it
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + (r["score"] >= expected.score)
    for _, m in drawn:
        assert len(m.true_dt) + len(m.false_dt) + len(m.ignored_dt) == per_image.get(m.image_id, 0)


def test_visualize_results_says_when_nothing_passes(evaluated, tmp_path, capsys):
    path, results, _ = evaluated
    visualize_results.run(path, VAL, str(tmp_path / "v"), threshold=0.99, num=1)
    printed = capsys.readouterr().out.splitlines()
    best = max(r["score"] for r in results)
    assert printed[:2] == ["score threshold 0.99 (--threshold)",
                           f"no prediction reaches the threshold 0.99 (highest score {best:.3g}); lower it with --threshold"]


def test_analyze_results_defaults_to_max_f1(evaluated, tmp_path, capsys):
    path, results, expected = evaluated
    out = analyze_results.run(path, VAL, str(tmp_path / "a"), class_plots=False)
    assert out["score_threshold"]["value"] == expected.score
    printed = capsys.readouterr().out
    assert f"Confusion matrix at score threshold {expected.score:.3g} (max F1 at IoU 0.5 of {path} on {VAL})" in printed
    counts = np.asarray(out["confusion_matrix"]["counts"])
    assert counts[:, :-1].sum() == sum(r["score"] >= expected.score for r in results)  # predictions kept
    analyze_results.run(path, VAL, str(tmp_path / "b"), score_threshold=0.99, class_plots=False)
    best = max(r["score"] for r in results)
    assert (f"no prediction reaches the threshold 0.99 (highest score {best:.3g}); lower it with --threshold"
            in capsys.readouterr().out)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A tiny model saved twice: with a display threshold in its metadata, and without metadata."""
    from detectron2.checkpoint import DetectionCheckpointer

    root = tmp_path_factory.mktemp("stored")
    cfg = tiny_deformable_detr_config("one_stage")
    model = save_tiny_checkpoint(cfg, root, class_bias_std=3.0)  # root/model_final.pth, no metadata
    meta = {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(6)},
            "display_threshold": {"score": 0.9, "f1": 0.5, "iteration": 1199, "dataset": "detrex_demo_val",
                                  "rule": "max F1 at IoU 0.5"}}
    DetectionCheckpointer(model, save_dir=str(root)).save("model_meta", meta=meta)
    image = str(root / "image.png")
    cv2.imwrite(image, np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8))
    return save_config(cfg, str(root / "tiny.yaml")), str(root / "model_meta.pth"), str(root / "model_final.pth"), image


def test_predictor_threshold_and_named_detections(stored):
    cfg_path, with_meta, without, image = stored
    predictor = Predictor(cfg_path, with_meta, device="cpu")
    assert predictor.threshold.value == 0.9
    assert predictor.threshold.describe() == (
        f"score threshold 0.9 (max F1 at IoU 0.5 on detrex_demo_val, iteration 1199, from {with_meta})")
    everything = predictor(image)
    assert len(everything) == 10  # __call__ still returns every detection
    found = predictor.detect(image)
    keep = everything.scores >= 0.9
    assert 0 < int(keep.sum()) < len(everything)  # the threshold matters on this image
    order = torch.argsort(everything.scores[keep], descending=True)
    torch.testing.assert_close(found["scores"], everything.scores[keep][order], rtol=0, atol=0)
    torch.testing.assert_close(found["boxes"], everything.pred_boxes.tensor[keep][order], rtol=0, atol=0)
    assert found["labels"].tolist() == everything.pred_classes[keep][order].tolist()
    assert found["label_names"] == [CLASSES[c] for c in found["labels"].tolist()]
    assert found["threshold"] == 0.9
    assert len(predictor.detect(image, threshold=0.0)["scores"]) == 10
    explicit = Predictor(cfg_path, with_meta, device="cpu", threshold=0.6)
    assert (explicit.threshold.value, explicit.threshold.source) == (0.6, "Predictor(threshold=)")
    old = Predictor(cfg_path, without, device="cpu")
    assert old.threshold.value == 0.3
    assert old.threshold.source == f"no threshold stored in {without}; default"
    named = old.detect(image)  # names from the config's test dataset (the demo's) without metadata
    assert named["label_names"] == [CLASSES[c] for c in named["labels"].tolist()]


@pytest.mark.parametrize("which", ["stored", "old", "explicit"])
def test_demo_uses_and_names_its_threshold(stored, tmp_path, which):
    cfg_path, with_meta, without, image = stored
    demo = load_tool("demo")
    ckpt = without if which == "old" else with_meta
    flags = ["--threshold", "0.92"] if which == "explicit" else []
    records = LogRecords()
    logging.getLogger("detrex_lite.demo").addHandler(records)
    try:
        code = demo.main(["--config-file", cfg_path, "--input", image, "--output", str(tmp_path), "--json",
                          "--device", "cpu", *flags, f"train.init_checkpoint={ckpt}"])
    finally:
        logging.getLogger("detrex_lite.demo").removeHandler(records)
    assert code == 0
    said = [m for m in records.messages if m.startswith("Drawing detections with")]
    expected, source = {
        "stored": (0.9, f"max F1 at IoU 0.5 on detrex_demo_val, iteration 1199, from {with_meta}"),
        "old": (0.3, f"no threshold stored in {without}; default"),
        "explicit": (0.92, "--threshold"),
    }[which]
    assert said == [f"Drawing detections with score threshold {expected:g} ({source})"]
    with open(tmp_path / "detections.json") as f:
        written = json.load(f)
    scores = Predictor(cfg_path, ckpt, device="cpu")(image).scores
    assert len(written) == int((scores >= expected).sum())
