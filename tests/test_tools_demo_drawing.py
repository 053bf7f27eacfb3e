"""The drawing (detrex_lite.visualization) and demo.py as a user reads them: labels beside (not
over) small objects and never over each other or past the border, one palette (colour = class,
line style = correct / false), --scale / --line-width, the ground-truth overlay, display-only
duplicate suppression, every default in --help, and what it says when nothing clears the
threshold."""
import logging

import numpy as np
import pytest
import torch

from detrex_lite.apps.demo import ground_truth_key, load_ground_truth
from detrex_lite.visualization import (
    DASHED,
    GROUND_TRUTH_COLOR,
    SOLID,
    class_color,
    dedupe,
    draw_detections,
    place_labels,
)
from test_tools_demo import demo, setup  # noqa: F401  (setup: the tiny model, its config and input images)
from tools_tiny_models import LogRecords


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
    # (one palette: ground truth is solid white on a black outline; dashed means missed)
    assert green[20, 20:60].all() and green[21, 20:60].all()  # solid, 2 px
    assert not drawn[19, 22:58].any() and not drawn[22, 22:58].any()  # the black outline
    assert green[61:75, 20:40].any()  # its label, below the box
    missed = draw_detections(image, np.zeros((0, 4)), [], [], gt_boxes=np.array([[20.0, 20.0, 60.0, 60.0]]),
                             gt_labels=["ring"], line_width=2, gt_styles=[DASHED])
    white = np.all(missed == np.array(GROUND_TRUTH_COLOR, np.uint8), axis=-1)
    assert white[20, 20:60].any() and not white[20, 20:60].all()  # dashed
    assert GROUND_TRUTH_COLOR not in [class_color(c) for c in range(20)]


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        demo.get_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: the display threshold stored in the checkpoint" in text and "(default: 1.0)" in text
    for option in ("--scale", "--line-width", "--font-scale", "--dataset"):
        assert option in text


def test_nothing_above_the_threshold_is_said_with_the_best_score(setup, tmp_path):  # noqa: F811
    from detrex_lite.predictor import Predictor

    cfg_path, inputs, _, _ = setup
    records = LogRecords()
    logging.getLogger("detrex_lite.demo").addHandler(records)
    try:
        code = demo.main(["--config-file", cfg_path, "--input", str(inputs / "b.png"), "--output", str(tmp_path),
                          "--confidence-threshold", "1.01", "--device", "cpu", "--scale", "2"])
    finally:
        logging.getLogger("detrex_lite.demo").removeHandler(records)
    assert code == 0
    best = Predictor(cfg_path, device="cpu")(str(inputs / "b.png")).scores.max().item()
    said = [m for m in records.messages if "no prediction reaches the threshold 1.01" in m]
    assert said == [f"{inputs / 'b.png'}: no prediction reaches the threshold 1.01 (highest score {best:.3g}); "
                    "lower it with --threshold"]
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

    index = load_ground_truth("detrex_demo_val")
    record = DatasetCatalog.get("detrex_demo_val")[0]
    entry = index[ground_truth_key(record["file_name"])]
    assert entry["image_id"] == record["image_id"]
    assert len(entry["classes"]) == len(record["annotations"]) == len(entry["boxes"])
    x, y, w, h = record["annotations"][0]["bbox"]  # XYWH_ABS in the demo json
    assert entry["boxes"][0] == pytest.approx([x, y, x + w, y + h])
    assert torch.is_tensor(entry["boxes"]) is False


def _disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_labels_never_overlap_or_leave_the_image_when_crowded():
    rng = np.random.default_rng(0)
    height, width = 160, 200
    # 40 boxes, many stacked at the same spots and along the borders, labels 30-70 px wide.
    corners = rng.integers(0, [width - 10, height - 10], size=(40, 2))
    corners[:8] = (0, 0)
    corners[8:14] = (width - 12, height - 12)
    sizes_wh = rng.integers(5, 40, size=(40, 2))
    boxes = [(int(x), int(y), int(min(width - 1, x + w)), int(min(height - 1, y + h)))
             for (x, y), (w, h) in zip(corners, sizes_wh)]
    sizes = [(int(w), 13) for w in rng.integers(30, 70, size=40)]
    rects = place_labels(boxes, sizes, (height, width), gap=1, below_first=[i % 2 == 1 for i in range(40)])
    placed = [(i, r) for i, r in enumerate(rects) if r is not None]
    assert len(placed) >= 20  # most find a place; the rest are left out rather than overlapping
    for i, (x0, y0, x1, y1) in placed:
        assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        assert (x1 - x0, y1 - y0) == sizes[i]
    for n, (_, a) in enumerate(placed):
        for _, b in placed[n + 1:]:
            assert _disjoint(a, b), (a, b)


def test_labels_of_stacked_boxes_all_find_a_place():
    # Six boxes on one spot at the top-left corner: no room above; every label still placed,
    # inside the image, none over another, the first (most important) one next to its box.
    boxes = [(0, 0, 30, 30)] * 6
    sizes = [(40, 12)] * 6
    rects = place_labels(boxes, sizes, (120, 120))
    assert all(r is not None for r in rects)
    assert rects[0] == (0, 31, 40, 43)  # below the box (above is outside the image)
    for n, a in enumerate(rects):
        assert 0 <= a[0] and 0 <= a[1] and a[2] <= 120 and a[3] <= 120
        for b in rects[n + 1:]:
            assert _disjoint(a, b)
    # A label wider than the image has no place.
    assert place_labels([(0, 0, 5, 5)], [(130, 10)], (120, 120)) == [None]


def test_a_label_keeps_clear_of_other_boxes_lines_when_it_can():
    a, b = (10, 40, 40, 70), (0, 25, 100, 38)  # above a, a label would cover b's bottom line
    assert place_labels([a, b], [(40, 12), (40, 12)], (120, 120))[0] == (10, 71, 50, 83)  # below a
    # no room below, and a box c across a's inside: no line-free place, the first free one is taken
    c = (0, 45, 100, 60)
    assert place_labels([a, b, c], [(40, 12)], (80, 120), max_shift=0) == [(10, 28, 50, 40)]


def test_drawn_labels_do_not_cover_each_other():
    """Two boxes on the same spot: both labels are drawn (two tags of the two class colours)."""
    image = np.zeros((100, 120, 3), np.uint8)
    boxes = np.array([[40.0, 40.0, 70.0, 70.0], [40.0, 40.0, 70.0, 70.0]])
    drawn = draw_detections(image, boxes, ["circle 90%", "ring 80%"], [1, 4], line_width=1)
    for c in (1, 4):
        tag = np.all(drawn == np.array(class_color(c), np.uint8), axis=-1)
        tag[40:71, 40:71] = False  # not the box lines
        assert tag.sum() > 400  # a whole tag (about 60 x 17 px, less its text), not a sliver


def test_one_palette_colour_is_the_class_line_style_is_correct_or_false():
    image = np.zeros((60, 80, 3), np.uint8)
    box = np.array([[10.0, 10.0, 70.0, 50.0]])
    correct = draw_detections(image, box, [""], [3], styles=[SOLID], line_width=1)
    false = draw_detections(image, box, [""], [3], styles=[DASHED], line_width=1)
    other_class = draw_detections(image, box, [""], [5], styles=[SOLID], line_width=1)
    top = {name: drawn[10, 10:71] for name, drawn in (("correct", correct), ("false", false), ("other", other_class))}
    colours = {name: {tuple(p) for p in edge if p.any()} for name, edge in top.items()}
    assert colours["correct"] == colours["false"] == {class_color(3)}  # same colour ...
    assert top["correct"].any(axis=-1).all()  # ... solid
    assert 0.3 < top["false"].any(axis=-1).mean() < 0.8  # ... dashed
    assert colours["other"] == {class_color(5)} != colours["correct"]
    # one colour per class, stable, none of them the ground truth's white
    palette = [class_color(c) for c in range(40)]
    assert len(set(palette)) == 40 and palette == [class_color(c) for c in range(40)]
    assert GROUND_TRUTH_COLOR not in palette
    with pytest.raises(ValueError, match="line styles"):
        draw_detections(image, box, [""], [3], styles=["red"])


def test_dedupe_is_class_agnostic_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = [0.9, 0.8, 0.95, 0.5]
    # IoU(A, B) = 90 / 110 = 0.818; IoU(A, D) = 1; C overlaps nothing.
    assert dedupe(boxes, scores, 0.5).tolist() == [2, 0]
    assert dedupe(boxes, scores, 0.9).tolist() == [2, 0, 1]
    assert dedupe(boxes, scores, 1.0).tolist() == [2, 0, 1, 3]


def test_demo_drawer_dedupe_draws_only_the_best_of_overlapping_boxes():
    from types import SimpleNamespace

    from detectron2.structures import Boxes, Instances

    from detrex_lite.apps.demo import Drawer

    image = np.full((80, 100, 3), 30, np.uint8)
    instances = Instances((80, 100), pred_boxes=Boxes(torch.tensor([[20.0, 20.0, 60.0, 60.0], [22.0, 20.0, 62.0, 60.0]])),
                          scores=torch.tensor([0.6, 0.9]), pred_classes=torch.tensor([0, 2]))
    drawer = Drawer(SimpleNamespace(thing_classes=["a", "b", "c"]), line_width=1, dedupe_iou=0.5)
    best_only = draw_detections(image, np.array([[22.0, 20.0, 62.0, 60.0]]), ["c 90%"], [2], line_width=1)
    np.testing.assert_array_equal(drawer(image, instances), best_only)
    drawer.dedupe_iou = None
    both = draw_detections(image, np.array([[22.0, 20.0, 62.0, 60.0], [20.0, 20.0, 60.0, 60.0]]),
                           ["c 90%", "a 60%"], [2, 0], line_width=1)
    np.testing.assert_array_equal(drawer(image, instances), both)
