"""tools/onnx_inference.py (detrex_lite.export.onnx_predictor): an exported tiny Deformable DETR
run with onnxruntime, numpy and Pillow gives the PyTorch Predictor's detections on the same image
file, from what tools/export_onnx.py records in the ONNX metadata; it imports neither torch nor
detectron2; its mistakes are one line, exit 2.

Tolerances measured on the tiny demo config (tests/configs/deformable_detr_tiny_demo.py, random
weights with spread class biases, three images of 150x110, 60x200 and 97x131 px): scores differ
by at most 1.2e-7 and boxes by at most 3.1e-5 px, in the same order; the test allows 1e-5 and
1e-3 px.
"""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from detectron2.config import LazyConfig
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from detrex_lite.export.onnx_predictor import OnnxPredictor, resized_shape
from detrex_lite.predictor import Predictor
from tools_tiny_models import load_tool, save_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests/configs/deformable_detr_tiny_demo.py")
# (h, w): portrait, landscape limited by max_size (96) and a JPEG.
IMAGES = {"portrait.png": (150, 110), "wide.png": (60, 200), "photo.jpg": (97, 131)}
SCORE_TOL, BOX_TOL_PX = 1e-5, 1e-3


def export(argv):
    from detrex_lite.export.onnx_tool import export_and_check
    from detrex_lite.export.options import parse_export_onnx_args

    return export_and_check(parse_export_onnx_args(argv))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, checkpoint, onnx path, image paths): the tiny demo config with random weights,
    exported as tools/export_onnx.py does (dynamic size, detections)."""
    root = tmp_path_factory.mktemp("onnx_inference")
    save_tiny_checkpoint(LazyConfig.load(CONFIG), str(root), class_bias_std=1.0)
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in IMAGES.items():
        cv2.imwrite(str(root / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(str(root / name))
    checkpoint, onnx_path = str(root / "model_final.pth"), str(root / "model.onnx")
    export(["--config-file", CONFIG, "--checkpoint", checkpoint, "--output", onnx_path, "--no-check"])
    return root, checkpoint, onnx_path, paths


@pytest.fixture(scope="module")
def predictor(exported):
    return Predictor(CONFIG, exported[1], device="cpu")


def run_tool(argv, capsys):
    code = load_tool("onnx_inference").main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_detections(ours, instances):
    """``ours`` (the tool's JSON detections of one image) equal the Predictor's ``instances``:
    same count and, position by position, same class, scores within SCORE_TOL and boxes within
    BOX_TOL_PX; two detections of one class whose scores are within SCORE_TOL may have swapped."""
    scores = instances.scores.numpy()
    boxes = instances.pred_boxes.tensor.numpy()
    classes = instances.pred_classes.numpy()
    assert len(ours) == len(scores)
    got_scores = np.array([d["score"] for d in ours])
    assert np.all(np.diff(got_scores) <= 0), "not sorted by descending score"
    for i, d in enumerate(ours):
        same = np.nonzero((classes == d["class_id"]) & (np.abs(scores - d["score"]) <= SCORE_TOL))[0]
        assert same.size, f"detection {i} ({d['class_name']} {d['score']:.6f}) has no PyTorch counterpart"
        box_diff = np.abs(boxes[same] - np.array(d["box_xyxy"])).max(axis=1)
        assert box_diff.min() <= BOX_TOL_PX, (i, box_diff.min())


def test_metadata_records_what_deployment_needs(exported, predictor):
    props = {p.key: json.loads(p.value) for p in onnx.load(exported[2]).metadata_props}
    # The tiny config's test augmentation: ResizeShortestEdge(64, max_size=96), bilinear.
    assert props["test_resize"] == {"short_edge_length": 64, "max_size": 96, "interp": "bilinear"}
    assert props["class_names"] == list(MetadataCatalog.get("detrex_demo_val").thing_classes)
    assert props["pixel_mean"] == pytest.approx(predictor.model.pixel_mean.flatten().tolist())
    assert props["pixel_std"] == pytest.approx(predictor.model.pixel_std.flatten().tolist())
    assert props["format"] == "detections" and props["input_format"] == "RGB"


@pytest.mark.parametrize("h, w", [(150, 110), (60, 200), (97, 131), (64, 64), (1, 500), (480, 640), (1333, 800)])
@pytest.mark.parametrize("short_edge, max_size", [(64, 96), (800, 1333), (100, 100)])
def test_resized_shape_equals_detectron2s(h, w, short_edge, max_size):
    assert resized_shape(h, w, short_edge, max_size) == T.ResizeShortestEdge.get_output_shape(h, w, short_edge, max_size)


def test_preprocessing_equals_the_predictors(exported, predictor):
    from detrex_lite.data.dataset_mapper import read_image_file
    from detrex_lite.export.onnx_export import prepare_export_inputs
    from detrex_lite.export.onnx_predictor import read_rgb

    ours = OnnxPredictor(exported[2])
    for path in exported[3]:
        rgb = read_rgb(path)
        np.testing.assert_array_equal(rgb, read_image_file(path, "RGB"))
        images, sizes = ours.preprocess(rgb)
        ref_images, ref_sizes = prepare_export_inputs(predictor.model, [predictor.preprocess(rgb)["image"]])
        np.testing.assert_array_equal(sizes, ref_sizes.numpy())
        np.testing.assert_array_equal(images, ref_images.numpy())


def test_detections_equal_the_pytorch_predictors(exported, predictor, tmp_path, capsys):
    out = tmp_path / "detections.json"
    code, stdout, _ = run_tool([exported[2], *exported[3], "--threshold", "0", "--json", str(out)], capsys)
    assert code == 0
    results = json.load(open(out))
    assert [r["file_name"] for r in results] == exported[3]
    for result, path in zip(results, exported[3]):
        instances = predictor(path)
        assert (result["height"], result["width"]) == instances.image_size
        assert_same_detections(result["detections"], instances)
        names = MetadataCatalog.get("detrex_demo_val").thing_classes
        assert all(d["class_name"] == names[d["class_id"]] for d in result["detections"])
    total = sum(len(r["detections"]) for r in results)
    assert stdout.splitlines()[-1] == f"{total} detections with score >= 0 in 3 images, written to {out}"


def test_threshold_keeps_the_predictors_detections_above_it(exported, predictor, capsys):
    path = exported[3][0]
    instances = predictor(path)
    threshold = float(np.median(instances.scores.numpy()))
    result = OnnxPredictor(exported[2])(path, threshold)
    kept = instances[instances.scores >= threshold]
    assert 0 < len(kept) < len(instances)
    assert_same_detections([d._asdict() | {"box_xyxy": d.box} for d in result.detections], kept)
    code, stdout, _ = run_tool([exported[2], path, "--threshold", "1"], capsys)
    assert code == 0
    best = float(instances.scores.max())
    assert f"no detection with score >= 1 (highest score {best:.3f})" in stdout
    assert stdout.splitlines()[-1] == "0 detections with score >= 1 in 1 image"


def test_runs_without_torch_or_detectron2(exported):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "tools/onnx_inference.py", exported[2], exported[3][1]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in modules and "PIL" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "detectron2", "fvcore", "cv2"))
    assert not heavy, heavy[:5]
    assert proc.stdout.splitlines()[-1].endswith("in 1 image")


def _without(onnx_path, key, target):
    proto = onnx.load(onnx_path)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    for k, v in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, target)
    return target


def test_resize_given_on_the_command_line_when_not_recorded(exported, predictor, tmp_path, capsys):
    bare = _without(exported[2], "test_resize", str(tmp_path / "bare.onnx"))
    code, _, err = run_tool([bare, exported[3][0]], capsys)
    assert code == 2
    assert err.strip() == (
        f"onnx_inference: error: {bare} records no test_resize in its metadata: give --short-edge and "
        "--max-size (the config's dataloader.test.mapper.augmentation)"
    )
    out = tmp_path / "d.json"
    code, _, _ = run_tool([bare, exported[3][0], "--short-edge", "64", "--max-size", "96", "--threshold", "0",
                           "--json", str(out)], capsys)
    assert code == 0
    assert_same_detections(json.load(open(out))[0]["detections"], predictor(exported[3][0]))


def test_mistakes_are_one_line_with_exit_2(exported, tmp_path, capsys):
    code, _, err = run_tool([exported[2], str(tmp_path / "missing.jpg")], capsys)
    assert (code, err.strip()) == (2, f"onnx_inference: error: image {tmp_path / 'missing.jpg'} does not exist")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, _, err = run_tool([exported[2], str(broken)], capsys)
    assert code == 2 and err.startswith(f"onnx_inference: error: cannot read image {broken}: ") and err.count("\n") == 1
    code, _, err = run_tool([str(tmp_path / "none.onnx"), exported[3][0]], capsys)
    assert (code, err.strip()) == (2, f"onnx_inference: error: ONNX file {tmp_path / 'none.onnx'} does not exist")


def test_raw_and_fixed_size_exports(exported, tmp_path, capsys):
    root, checkpoint, _, paths = exported
    raw = str(tmp_path / "raw.onnx")
    export(["--config-file", CONFIG, "--checkpoint", checkpoint, "--output", raw, "--format", "raw", "--no-check"])
    code, _, err = run_tool([raw, paths[0]], capsys)
    assert (code, err.strip()) == (
        2, f"onnx_inference: error: {raw} was exported with --format raw; export it with --format detections"
    )
    # A fixed-size graph gets the resized image zero-padded into its canvas; one that does not
    # fit is refused with both sizes.
    fixed = str(tmp_path / "fixed.onnx")
    export(["--config-file", CONFIG, "--checkpoint", checkpoint, "--output", fixed, "--fixed-size",
            "--canvas", "96", "64", "--no-check"])
    result = OnnxPredictor(fixed)(paths[0], threshold=0.0)  # 150x110 -> 87x64: fits
    assert result.resized == (87, 64) and result.detections
    assert all(0 <= d.box[0] <= d.box[2] <= 110 and 0 <= d.box[1] <= d.box[3] <= 150 for d in result.detections)
    code, _, err = run_tool([fixed, paths[1]], capsys)  # 60x200 -> 29x96: too wide
    assert (code, err.strip()) == (
        2, f"onnx_inference: error: {fixed} takes at most 96x64 (exported with --fixed-size); the image resizes to 29x96"
    )


def docs_snippet() -> str:
    """The Python block of docs/inference.md's onnxruntime section."""
    with open(os.path.join(REPO, "docs/inference.md")) as f:
        text = f.read()
    section = text[text.index("## Deploying the ONNX export with onnxruntime"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


def test_the_docs_snippet_prints_the_tools_detections(exported, capsys):
    onnx_path, image = exported[2], exported[3][1]
    code = docs_snippet()
    assert '"model.onnx"' in code and '"photo.jpg"' in code and ">= 0.3" in code
    exec(compile(code.replace('"model.onnx"', repr(onnx_path)).replace('"photo.jpg"', repr(image)), "docs", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = [
        f"{d.class_name} {d.score:.3f} {[round(float(v), 1) for v in d.box]}"
        for d in OnnxPredictor(onnx_path)(image, threshold=0.3).detections
    ]
    assert printed == expected and expected


def test_the_checkpoints_display_threshold_is_recorded_and_used_by_default(exported, tmp_path, capsys):
    """A checkpoint whose meta holds the evaluation's suggested threshold: the export records it
    (with where it came from) and the tool keeps detections from it by default and says so; an
    export of a checkpoint without one says 'default' and uses 0.3; --threshold wins."""
    import torch

    _, checkpoint, plain_onnx, paths = exported
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state.setdefault("meta", {})["display_threshold"] = {
        "score": 0.4125, "f1": 0.5, "iteration": 1199, "dataset": "detrex_demo_val", "rule": "max F1 at IoU 0.5"}
    with_threshold = str(tmp_path / "with_threshold.pth")
    torch.save(state, with_threshold)
    onnx_path = str(tmp_path / "with_threshold.onnx")
    export(["--config-file", CONFIG, "--checkpoint", with_threshold, "--output", onnx_path, "--no-check"])
    props = {p.key: json.loads(p.value) for p in onnx.load(onnx_path).metadata_props}
    source = f"max F1 at IoU 0.5 on detrex_demo_val, iteration 1199, from {with_threshold}"
    assert props["display_threshold"] == {"score": 0.4125, "source": source}
    assert "display_threshold" not in {p.key for p in onnx.load(plain_onnx).metadata_props}

    ours = OnnxPredictor(onnx_path)
    assert ours.threshold == 0.4125
    everything = ours(paths[0], threshold=0.0).detections
    assert [d.score for d in ours(paths[0]).detections] == [d.score for d in everything if d.score >= 0.4125]
    code, stdout, _ = run_tool([onnx_path, paths[0]], capsys)
    assert code == 0
    assert stdout.splitlines()[0] == f"score threshold 0.412 ({source}, recorded in {onnx_path})"
    code, stdout, _ = run_tool([plain_onnx, paths[0]], capsys)
    assert stdout.splitlines()[0] == f"score threshold 0.3 (no threshold recorded in {plain_onnx}; default)"
    code, stdout, _ = run_tool([onnx_path, paths[0], "--threshold", "0.25"], capsys)
    assert stdout.splitlines()[0] == "score threshold 0.25 (--threshold)"
