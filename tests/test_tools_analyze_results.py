"""tools/analyze_results.py and detrex_lite.analysis: the error-analysis curves against
independent COCOeval runs (C75/C50 = AP75/AP50, Loc = AP at IoU 0.1), Sim/Oth/BG/FN on a case
worked out by hand, the confusion matrix against the errors the predictions were built with,
the files the tool writes, and its one-line errors."""
import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detrex_lite.analysis import (
    ERROR_TYPES,
    confusion_matrix,
    dataset_coco_gt,
    error_analysis,
    load_predictions,
    predictions_coco,
)
from detrex_lite.analysis.coco_results import _coco_from_dict
from tests.tools_analysis_data import VAL, perturbed_predictions, register_small_demo, write_predictions
from tests.tools_tiny_models import load_tool

analyze_results = load_tool("analyze_results")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    folder = register_small_demo(str(root))
    gt_json = os.path.join(folder, "annotations", "instances_val.json")
    results = perturbed_predictions(gt_json)
    path = write_predictions(results, str(root / "inference" / VAL / "coco_instances_results.json"))
    return gt_json, path, results


def reference_eval(gt_json, results_path, **params):
    """pycocotools used directly, as detectron2's COCOEvaluator uses it."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        dt = gt.loadRes(results_path)
        e = COCOeval(gt, dt, "bbox")
        for k, v in params.items():
            setattr(e.params, k, v)
        e.evaluate()
        e.accumulate()
        if not params:
            e.summarize()
    return e


def mean_valid(p):
    return 100.0 * p[p > -1].mean()


def test_c75_c50_equal_cocoeval_ap75_ap50(demo):
    gt_json, path, _ = demo
    gt = dataset_coco_gt(VAL)
    analysis = error_analysis(gt, predictions_coco(gt, load_predictions(path, gt)))
    overall = analysis.overall_ap()
    ref = reference_eval(gt_json, path)
    assert 10.0 < ref.stats[1] * 100 < 90.0  # a non-trivial case
    assert overall[ERROR_TYPES.index("C75"), 0] == pytest.approx(100 * ref.stats[2], abs=1e-9)
    assert overall[ERROR_TYPES.index("C50"), 0] == pytest.approx(100 * ref.stats[1], abs=1e-9)
    # small objects: COCOeval's APs is over IoU .5:.95; compare AP50/AP75 of area "small" directly
    p = ref.eval["precision"]
    assert overall[ERROR_TYPES.index("C50"), 1] == pytest.approx(mean_valid(p[0, :, :, 1, 2]), abs=1e-9)
    assert overall[ERROR_TYPES.index("C75"), 1] == pytest.approx(mean_valid(p[5, :, :, 1, 2]), abs=1e-9)
    # per class too
    ap = analysis.ap()
    for k in range(len(analysis.class_names)):
        assert ap[1, k, 0] == pytest.approx(100 * p[0, :, k, 0, 2].mean(), abs=1e-9)


def test_loc_is_ap_at_iou_01_and_curves_are_ordered(demo):
    gt_json, path, _ = demo
    gt = dataset_coco_gt(VAL)
    analysis = error_analysis(gt, predictions_coco(gt, load_predictions(path, gt)))
    ref = reference_eval(gt_json, path, iouThrs=np.array([0.1]), maxDets=[100])
    loc = ERROR_TYPES.index("Loc")
    assert analysis.overall_ap()[loc, 0] == pytest.approx(mean_valid(ref.eval["precision"][0, :, :, 0, 0]), abs=1e-9)
    # each curve removes one more kind of error: C75 <= C50 <= Loc <= Sim <= Oth <= BG <= FN = 1
    p = np.nan_to_num(analysis.precision, nan=0.0)
    assert np.all(np.diff(p, axis=0) >= -1e-12)
    valid = ~np.isnan(analysis.precision[0, 0])
    assert np.all(analysis.precision[6][:, valid] == 1.0)
    # the demo has no object over 96x96: "large" is NaN everywhere, as COCOeval's APl = -1
    assert np.isnan(analysis.precision[:, :, :, 3]).all()
    assert analysis.num_gt[:, 3].sum() == 0
    with open(gt_json) as f:
        counts = np.bincount([a["category_id"] for a in json.load(f)["annotations"]], minlength=7)[1:]
    assert analysis.num_gt[:, 0].tolist() == counts.tolist()


def _two_class_case(same_supercategory: bool):
    """One image, a circle (class 1) at A and a square (class 2) at B. Predictions: a square on
    the circle (score 0.9), a square on the square (0.8). Worked out by hand:
    circle: no detection -> C50 = Loc = 0 for every curve but FN (and Sim/Oth: nothing to forgive).
    square: PR = [FP, TP] -> precision 0.5 at every recall -> C50 = Loc = 50; with the circle
    forgiven (Oth, and Sim if same supercategory) the FP is ignored -> 100."""
    supercats = ("shape", "shape") if same_supercategory else ("round", "angular")
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "circle", "supercategory": supercats[0]},
                       {"id": 2, "name": "square", "supercategory": supercats[1]}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    coco_gt = _coco_from_dict(gt)
    results = [
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.8},
    ]
    return coco_gt, predictions_coco(coco_gt, results)


@pytest.mark.parametrize("same_supercategory", [True, False])
def test_sim_oth_bg_fn_by_hand(same_supercategory):
    coco_gt, coco_dt = _two_class_case(same_supercategory)
    analysis = error_analysis(coco_gt, coco_dt)
    ap = analysis.ap()[:, :, 0]  # (7, K) area all
    circle, square = ap[:, 0], ap[:, 1]
    expected_circle = {"C75": 0, "C50": 0, "Loc": 0, "Sim": 0, "Oth": 0, "BG": 0, "FN": 100}
    expected_square = {"C75": 50, "C50": 50, "Loc": 50, "Sim": 100 if same_supercategory else 50,
                       "Oth": 100, "BG": 100, "FN": 100}
    for t, name in enumerate(ERROR_TYPES):
        assert circle[t] == pytest.approx(expected_circle[name]), name
        assert square[t] == pytest.approx(expected_square[name]), name
    overall = analysis.overall_ap()[:, 0]
    assert overall[ERROR_TYPES.index("Oth")] == pytest.approx(50.0)
    matrix, names = confusion_matrix(coco_gt, coco_dt)
    assert names == ["circle", "square", "background"]
    # the circle was taken for a square; the square found; nothing else
    assert matrix.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def expected_confusion(gt_json, results, score_threshold):
    """The confusion matrix the perturbations imply (tests/tools_analysis_data.py), counted
    from the construction, not by matching boxes."""
    with open(gt_json) as f:
        gt = json.load(f)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    k = len(cat_ids)
    m = np.zeros((k + 1, k + 1), dtype=np.int64)
    for i, ann in enumerate(sorted(gt["annotations"], key=lambda a: a["id"])):
        c = cat_ids.index(ann["category_id"])
        score = 0.5 + 0.45 * ((i * 37) % 100) / 100.0
        kind = i % 8
        above = score >= score_threshold
        if kind in (0, 1, 2, 3):
            m[c, c if above else k] += 1
        elif kind == 4:  # box too far off: a missed object and a false detection
            m[c, k] += 1
            m[k, c] += above
        elif kind == 5:  # taken for the next class
            if above:
                m[c, (c + 1) % k] += 1
            else:
                m[c, k] += 1
        elif kind == 6:  # found, plus a duplicate
            m[c, c if above else k] += 1
            m[k, c] += score - 0.3 >= score_threshold
        else:
            m[c, k] += 1
    for image in gt["images"]:
        m[k, cat_ids.index(cat_ids[image["id"] % k])] += 0.55 + 0.01 * (image["id"] % 10) >= score_threshold
    return m


@pytest.mark.parametrize("score_threshold", [0.0, 0.7])
def test_confusion_matrix_equals_the_constructed_errors(demo, score_threshold):
    gt_json, path, results = demo
    gt = dataset_coco_gt(VAL)
    matrix, names = confusion_matrix(gt, predictions_coco(gt, load_predictions(path, gt), score_threshold))
    assert names[-1] == "background" and len(names) == 7
    np.testing.assert_array_equal(matrix, expected_confusion(gt_json, results, score_threshold))


def test_cli_writes_tables_and_figures(demo, tmp_path, capsys):
    gt_json, path, _ = demo
    out = tmp_path / "analysis"
    assert analyze_results.main(["--predictions", path, "--dataset", VAL, "--out", str(out), "--score-threshold", "0.3"]) == 0
    printed = capsys.readouterr().out
    ref = reference_eval(gt_json, path)
    with open(out / "error_analysis.json") as f:
        rows = json.load(f)["rows"]
    first = rows[0]
    assert (first["class"], first["area"]) == ("all classes", "all")
    assert first["C75"] == pytest.approx(100 * ref.stats[2], abs=1e-3)
    assert first["C50"] == pytest.approx(100 * ref.stats[1], abs=1e-3)
    assert f"| all | {first['num_gt']} | {100 * ref.stats[2]:.1f} | {100 * ref.stats[1]:.1f} |" in printed
    with open(out / "error_analysis.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows) == 4 * 7  # (overall + 6 classes) x 4 areas
    with open(out / "per_class_ap.csv") as f:
        ap_rows = list(csv.DictReader(f))
    assert ap_rows[-1]["class"] == "all classes"
    assert float(ap_rows[-1]["AP"]) == pytest.approx(100 * ref.stats[0], abs=1e-3)
    p = ref.eval["precision"]
    with open(gt_json) as f:
        gt = json.load(f)
    for k, row in enumerate(ap_rows[:-1]):
        assert float(row["AP"]) == pytest.approx(mean_valid(p[:, :, k, 0, 2]), abs=1e-3)
        assert int(row["num_gt"]) == sum(a["category_id"] == k + 1 for a in gt["annotations"])
    with open(out / "confusion_matrix.csv") as f:
        cm = list(csv.reader(f))
    assert cm[0][-1] == "background" and cm[-1][0] == "background"
    expected = expected_confusion(gt_json, demo[2], 0.3)
    assert [[int(v) for v in row[1:]] for row in cm[1:]] == expected.tolist()
    pngs = ["error_analysis.png", "confusion_matrix.png"] + [f"per_class/{n}" for n in os.listdir(out / "per_class")]
    assert len(pngs) == 2 + 6
    for name in pngs:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_clear_errors(demo, tmp_path, capsys):
    _, path, results = demo
    cases = [
        (["--predictions", str(tmp_path / "none.json"), "--dataset", VAL], "predictions file not found"),
        (["--predictions", path, "--dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    ]
    bad = write_predictions([dict(results[0], image_id=10 ** 6)], str(tmp_path / "bad" / "p.json"))
    cases.append((["--predictions", bad, "--dataset", VAL], "image_id 1000000 is not in the dataset"))
    no_score = write_predictions([{k: v for k, v in results[0].items() if k != "score"}], str(tmp_path / "ns" / "p.json"))
    cases.append((["--predictions", no_score, "--dataset", VAL], "entry 0 has no score"))
    for argv, message in cases:
        assert analyze_results.main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
