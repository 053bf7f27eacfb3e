"""tools/demo.py on a tiny Deformable DETR: folders, globs, a video, an unreadable file, JSON
(with --dataset: the dataset's image ids), the override syntax."""
import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch

from detrex_lite.apps.demo import expand_inputs, output_name, split_overrides
from detrex_lite.predictor import Predictor
from tools_tiny_models import LogRecords, load_tool, save_config, save_tiny_checkpoint, tiny_deformable_detr_config

demo = load_tool("demo")  # the command line; what it does is detrex_lite.apps.demo


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = tiny_deformable_detr_config("one_stage")
    # spread scores: some above, some below the threshold
    save_tiny_checkpoint(cfg, root, class_bias_std=3.0)
    cfg.train.init_checkpoint = str(root / "model_final.pth")
    cfg_path = save_config(cfg, str(root / "tiny.yaml"))

    inputs = root / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    images = {"a.jpg": (70, 90), "b.png": (60, 80)}
    for name, (h, w) in images.items():
        cv2.imwrite(str(inputs / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    video = str(root / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(2):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return cfg_path, inputs, video, images


def test_demo_folder_video_json_and_skips(setup, tmp_path):
    cfg_path, inputs, video, images = setup
    out = tmp_path / "out"
    threshold = 0.3
    # The log records themselves: detectron2's setup_logger is cached per process, so its stdout
    # handler may write to another test's captured stream.
    records = LogRecords()
    logging.getLogger("detrex_lite.demo").addHandler(records)
    try:
        code = demo.main([
            "--config-file", cfg_path, "--input", str(inputs), video, "--output", str(out),
            "--confidence-threshold", str(threshold), "--json", "--device", "cpu",
        ])
    finally:
        logging.getLogger("detrex_lite.demo").removeHandler(records)
    assert code == 1  # one input was skipped ...
    assert any(m.startswith("Skipping " + str(inputs / "broken.jpg")) for m in records.messages)  # ... and named
    # ... and the rest were processed: one image per image input, at its size, with boxes drawn.
    assert sorted(os.listdir(out)) == ["a.jpg", "b.png", "clip.mp4", "detections.json"]
    for name, (h, w) in images.items():
        drawn = cv2.imread(str(out / name))
        assert drawn.shape == (h, w, 3)
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (64, 48)
    capture.release()

    # The JSON holds exactly the Predictor's detections above the threshold, as COCO xywh.
    results = json.load(open(out / "detections.json"))
    predictor = Predictor(cfg_path, device="cpu")
    # COCO results use the dataset's category ids (the demo json's), not the contiguous ones.
    to_dataset_id = {v: k for k, v in predictor.metadata.thing_dataset_id_to_contiguous_id.items()}
    assert sorted(to_dataset_id) == list(range(6))
    expected = []
    for image_id, name in enumerate(["a.jpg", "b.png"]):
        inst = predictor(str(inputs / name))
        inst = inst[inst.scores >= threshold]
        for box, score, cls in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()):
            expected.append((image_id, to_dataset_id[cls], score, [box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    got = [(r["image_id"], r["category_id"], r["score"], r["bbox"]) for r in results if "frame" not in r]
    assert len(got) == len(expected) > 0
    for (gi, gc, gs, gb), (ei, ec, es, eb) in zip(got, expected):
        assert (gi, gc) == (ei, ec)
        assert gs == pytest.approx(es, abs=1e-6)
        assert gb == pytest.approx(eb, abs=1e-4)
    assert min(r["score"] for r in results) >= threshold
    # Video frames continue the image ids, one id per frame, with the frame index.
    capture = cv2.VideoCapture(video)
    expected_frames = []
    for index in range(2):
        ok, frame = capture.read()
        assert ok
        inst = predictor(frame)
        expected_frames += [(2 + index, index)] * int((inst.scores >= threshold).sum())
    capture.release()
    got_frames = [(r["image_id"], r["frame"]) for r in results if "frame" in r]
    assert got_frames == expected_frames and len(got_frames) > 0


def test_drawing_changes_pixels_only_with_detections(setup, tmp_path):
    cfg_path, inputs, _, _ = setup
    for threshold, expect_change in ((0.0, True), (1.01, False)):
        out = tmp_path / f"t{threshold}"
        code = demo.main([
            "--config-file", cfg_path, "--input", str(inputs / "*.png"), "--output", str(out),
            "--confidence-threshold", str(threshold), "--device", "cpu",
        ])
        assert code == 0
        original = cv2.imread(str(inputs / "b.png")).astype(int)
        drawn = cv2.imread(str(out / "b.png")).astype(int)
        changed = np.abs(drawn - original).max() > 0
        assert changed == expect_change


def test_expand_inputs(tmp_path):
    for name in ("x.jpg", "y.PNG", "notes.txt", "v.mp4"):
        (tmp_path / name).write_bytes(b"")
    folder = expand_inputs([str(tmp_path)])
    assert [os.path.basename(p) for p in folder] == ["v.mp4", "x.jpg", "y.PNG"]
    assert [os.path.basename(p) for p in expand_inputs([str(tmp_path / "*.jpg")])] == ["x.jpg"]
    assert expand_inputs(["missing.jpg"]) == ["missing.jpg"]
    used = {}
    assert [output_name(p, used) for p in ("a/x.jpg", "b/x.jpg", "c/y.jpg")] == ["x.jpg", "x_1.jpg", "y.jpg"]


def test_command_line_exit_status(setup, tmp_path):
    import subprocess
    import sys

    cfg_path, inputs, _, _ = setup
    cmd = [sys.executable, demo.__file__, "--config-file", cfg_path, "--output", str(tmp_path / "o"), "--device", "cpu"]
    done = subprocess.run(cmd + ["--input", str(inputs / "a.jpg"), str(tmp_path / "missing.jpg")], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Skipping " + str(tmp_path / "missing.jpg") in done.stdout + done.stderr
    assert os.path.isfile(tmp_path / "o" / "a.jpg")


def test_json_keeps_the_dataset_image_ids(setup, tmp_path):
    """With --dataset, an input that is an image of the dataset is written with the dataset's
    image_id (so detections.json can be scored against it); other inputs come after its ids."""
    from detectron2.data import DatasetCatalog

    from tests.tools_analysis_data import VAL, register_small_demo

    cfg_path, inputs, _, _ = setup
    folder = register_small_demo(str(tmp_path / "data"))
    records = sorted(DatasetCatalog.get(VAL), key=lambda r: r["image_id"])[:3]
    files = [r["file_name"] for r in records] + [str(inputs / "a.jpg")]
    out = tmp_path / "out"
    code = demo.main(["--config-file", cfg_path, "--input", *files, "--output", str(out), "--json",
                      "--confidence-threshold", "0", "--device", "cpu", "--dataset", VAL])
    assert code == 0 and os.path.isdir(folder)
    results = json.load(open(out / "detections.json"))
    ids = {os.path.basename(r["file_name"]): r["image_id"] for r in results}
    expected = {os.path.basename(r["file_name"]): r["image_id"] for r in records}
    expected["a.jpg"] = max(r["image_id"] for r in DatasetCatalog.get(VAL)) + 1
    assert ids == expected
    assert len(results) == 4 * 10  # threshold 0: every detection (select_box_nums_for_evaluation = 10)


def test_overrides_after_the_flags(setup, tmp_path, capsys):
    cfg_path, inputs, _, _ = setup
    missing = str(tmp_path / "no_such_weights.pth")
    image = str(inputs / "a.jpg")
    assert split_overrides([image, f"train.init_checkpoint={missing}", "+x.y=1"]) == (
        [image], [f"train.init_checkpoint={missing}", "+x.y=1"])
    base = ["--config-file", cfg_path, "--output", str(tmp_path / "o"), "--device", "cpu"]
    for argv, deprecated in (
        (base + ["--input", image, f"train.init_checkpoint={missing}"], False),  # right after --input
        (["--input", image] + base + [f"train.init_checkpoint={missing}"], False),  # after the last flag
        (base + ["--input", image, "--opts", f"train.init_checkpoint={missing}"], True),
    ):
        code = demo.main(argv)
        err = capsys.readouterr().err
        assert code == 1 and "demo: error:" in err and "no_such_weights.pth" in err, err
        assert ("--opts is deprecated" in err) == deprecated
    assert not os.path.exists(tmp_path / "o" / "a.jpg")
