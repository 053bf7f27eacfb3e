"""tools/visualize_results.py: --worst picks the images with the most missed + false boxes (the
counts implied by how the predictions were made), one drawn PNG per image, clear errors."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from detrex_lite.apps.visualize_results import run
from tests.tools_analysis_data import VAL, perturbed_predictions, register_small_demo, write_predictions
from tests.tools_tiny_models import load_tool

visualize_results = load_tool("visualize_results")  # the command line; what it does is detrex_lite.apps


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualize")
    folder = register_small_demo(str(root))
    gt_json = os.path.join(folder, "annotations", "instances_val.json")
    path = write_predictions(perturbed_predictions(gt_json), str(root / "coco_instances_results.json"))
    return gt_json, path


def expected_errors(gt_json, threshold):
    """{image_id: (missed, false)} from the construction in tests/tools_analysis_data.py."""
    with open(gt_json) as f:
        gt = json.load(f)
    errors = {image["id"]: [0, 0] for image in gt["images"]}
    for i, ann in enumerate(sorted(gt["annotations"], key=lambda a: a["id"])):
        e = errors[ann["image_id"]]
        score = 0.5 + 0.45 * ((i * 37) % 100) / 100.0
        kind = i % 8
        if kind in (0, 1, 2, 3, 6):
            e[0] += score < threshold
        if kind == 6:
            e[1] += score - 0.3 >= threshold
        if kind in (4, 5):
            e[0] += 1
            e[1] += score >= threshold
        if kind == 7:
            e[0] += 1
    for image in gt["images"]:
        errors[image["id"]][1] += 0.55 + 0.01 * (image["id"] % 10) >= threshold
    return errors


@pytest.mark.parametrize("threshold,worst", [(0.5, 3), (0.8, 2)])
def test_worst_images_and_their_counts(demo, tmp_path, threshold, worst):
    gt_json, path = demo
    out = tmp_path / "worst"
    drawn = run(path, VAL, str(out), threshold=threshold, worst=worst)
    expected = expected_errors(gt_json, threshold)
    ranking = sorted(expected, key=lambda i: (-sum(expected[i]), i))[:worst]
    assert [m.image_id for _, m in drawn] == ranking
    for _, m in drawn:
        assert (len(m.missed_gt), len(m.false_dt)) == tuple(expected[m.image_id])
    assert sorted(os.listdir(out)) == [f"{r + 1:03d}_{i}.png" for r, i in enumerate(ranking)]
    image = np.asarray(Image.open(out / f"001_{ranking[0]}.png"))
    assert image.shape[1] > image.shape[0] > 200  # two panels side by side


def test_cli_first_images_and_table(demo, tmp_path, capsys):
    gt_json, path = demo
    out = tmp_path / "first"
    assert visualize_results.main(["--predictions", path, "--dataset", VAL, "--num", "2", "--out", str(out),
                                   "--threshold", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["001_1.png", "002_2.png"]
    expected = expected_errors(gt_json, 0.5)
    with open(gt_json) as f:
        objects = sum(a["image_id"] == 1 for a in json.load(f)["annotations"])
    assert f"| 1 | 1 | 000001.jpg | {objects} |" in printed
    assert printed.count("\n| 1 | 1 | 000001.jpg") == 1
    line = next(l for l in printed.splitlines() if l.startswith("| 1 | 1 |"))
    assert line.endswith(f"| {expected[1][0]} | {expected[1][1]} |")


def test_clear_errors(demo, tmp_path, capsys):
    _, path = demo
    for argv, message in (
        (["--predictions", str(tmp_path / "x.json"), "--dataset", VAL], "predictions file not found"),
        (["--predictions", path, "--dataset", "nope_val"], "unknown dataset 'nope_val'"),
    ):
        assert visualize_results.main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_dedupe_changes_the_drawing_only(demo, tmp_path):
    _, path = demo
    plain = run(path, VAL, str(tmp_path / "plain"), threshold=0.0, worst=4)
    deduped = run(path, VAL, str(tmp_path / "dedupe"), threshold=0.0, worst=4, dedupe_iou=0.5)
    # the same images and counts (the matching is of every prediction) ...
    assert [(m.image_id, m.missed_gt, m.false_dt) for _, m in plain] == [
        (m.image_id, m.missed_gt, m.false_dt) for _, m in deduped]
    # ... but the duplicate pairs of the data (an exact copy of a found box) are drawn once
    differ = [not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
              for (a, _), (b, _) in zip(plain, deduped)]
    assert any(differ)
