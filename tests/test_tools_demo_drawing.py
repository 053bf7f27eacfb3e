"""demo.py as a user reads it: labels beside (not over) small objects, --scale / --line-width, the
ground-truth overlay, every default in --help, and what it says when nothing clears the threshold."""
import logging

import numpy as np
import pytest
import torch

from detrex_lite.utils.draw import GROUND_TRUTH_COLOR, class_color, draw_detections
from test_tools_demo import _Records, demo, setup  # noqa: F401  (setup: the tiny model, its config and input images)


def _changed(a, b):
    return np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 0


def test_label_sits_outside_a_small_box():
    image = np.full((100, 120, 3), 40, np.uint8)
    box = np.array([[50.0, 40.0, 60.0, 50.0]])  # a 10 px object
    drawn = draw_detections(image, box, ["circle 87%"], [2], line_width=1)
    changed = _changed(drawn, image)
    assert not changed[42:49, 52:59].any()  # the object itself stays visible
    assert changed[40, 50:61].all() and changed[50, 50:61].all()  # the box lines
    assert changed[25:39, 50:90].mean() > 0.5  # the label tag, above the box
    assert tuple(drawn[39, 50]) == class_color(2)  # the tag is the class colour
    # A box at the top edge: the label goes below it, still outside.
    top = draw_detections(image, np.array([[50.0, 0.0, 60.0, 10.0]]), ["circle 87%"], [2], line_width=1)
    changed = _changed(top, image)
    assert not changed[2:9, 52:59].any() and changed[12:25, 50:90].mean() > 0.5


def test_scale_and_line_width():
    image = np.zeros((30, 40, 3), np.uint8)
    box = np.array([[10.0, 10.0, 30.0, 20.0]])
    drawn = draw_detections(image, box, [""], [0], scale=4, line_width=3)
    assert drawn.shape == (120, 160, 3)
    column = _changed(drawn, np.zeros_like(drawn))[:, 80]  # a vertical cut through the box
    rows = np.flatnonzero(column)
    # The edges at 4x (y = 40 and 80), each exactly 3 px wide and centred on the edge.
    assert rows.tolist() == [39, 40, 41, 79, 80, 81]
    with pytest.raises(ValueError, match="scale"):
        draw_detections(image, box, [""], [0], scale=0)


def test_ground_truth_is_drawn_in_its_own_colour():
    image = np.zeros((80, 80, 3), np.uint8)
    drawn = draw_detections(image, np.zeros((0, 4)), [], [], gt_boxes=np.array([[20.0, 20.0, 60.0, 60.0]]),
                            gt_labels=["ring"], line_width=2)
    green = np.all(drawn == np.array(GROUND_TRUTH_COLOR, np.uint8), axis=-1)
    assert green[20, 20:60].any() and not green[20, 20:60].all()  # dashed
    assert green[61:75, 20:40].any()  # its label, below the box
    assert GROUND_TRUTH_COLOR not in [class_color(c) for c in range(20)]


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        demo.get_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.5)" in text and "(default: 1.0)" in text
    for option in ("--scale", "--line-width", "--font-scale", "--dataset"):
        assert option in text


def test_nothing_above_the_threshold_is_said_with_the_best_score(setup, tmp_path):  # noqa: F811
    from detrex_lite.predictor import Predictor

    cfg_path, inputs, _, _ = setup
    records = _Records()
    logging.getLogger("detrex_lite.demo").addHandler(records)
    try:
        code = demo.main(["--config-file", cfg_path, "--input", str(inputs / "b.png"), "--output", str(tmp_path),
                          "--confidence-threshold", "1.01", "--device", "cpu", "--scale", "2"])
    finally:
        logging.getLogger("detrex_lite.demo").removeHandler(records)
    assert code == 0
    best = Predictor(cfg_path, device="cpu")(str(inputs / "b.png")).scores.max().item()
    said = [m for m in records.messages if "no detection scores >= 1.01" in m]
    assert said == [f"{inputs / 'b.png'}: no detection scores >= 1.01 (highest score {best:.3f}); "
                    "lower --confidence-threshold to draw more"]
    import cv2

    assert cv2.imread(str(tmp_path / "b.png")).shape == (120, 160, 3)  # --scale 2 of 60x80


def test_unknown_dataset_is_refused(setup, tmp_path, capsys):  # noqa: F811
    cfg_path, inputs, _, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", cfg_path, "--input", str(inputs), "--output", str(tmp_path), "--dataset", "nope"])
    assert exit_info.value.code == 2
    assert "--dataset nope: not a registered dataset" in capsys.readouterr().err


def test_ground_truth_index_of_the_demo_dataset():
    from detectron2.data import DatasetCatalog

    import detrex_lite.data  # noqa: F401

    index = demo.load_ground_truth("detrex_demo_val")
    record = DatasetCatalog.get("detrex_demo_val")[0]
    entry = index[demo.ground_truth_key(record["file_name"])]
    assert len(entry["classes"]) == len(record["annotations"]) == len(entry["boxes"])
    x, y, w, h = record["annotations"][0]["bbox"]  # XYWH_ABS in the demo json
    assert entry["boxes"][0] == pytest.approx([x, y, x + w, y + h])
    assert torch.is_tensor(entry["boxes"]) is False
