"""The display threshold (detrex_lite.analysis.threshold): max F1 at IoU 0.5 checked by hand, against
a brute-force sweep that matches again at every threshold, and against COCOeval's own matching;
where tools take it from; how evaluation stores it (display_threshold.json, the run metadata of
the next checkpoints, an evaluation at the end before model_final.pth)."""
import json
import os

import numpy as np
import pytest
import torch

from detrex_lite.analysis import match_detections, predictions_coco
from detrex_lite.analysis.coco_results import _coco_from_dict
from detrex_lite.analysis.threshold import (
    DEFAULT_THRESHOLD,
    best_f1_threshold,
    choose_threshold,
    nothing_passes_message,
)
from detrex_lite.checkpoint.run import RunMetadata


def _gt(image_id, cat, box, crowd=0, ann_id=None):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "iscrowd": crowd,
            "area": box[2] * box[3], "id": ann_id}


def _dt(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


def test_hand_computed_case():
    # Image 1: two objects of class 1. Image 2: one object of class 2.
    gt = [_gt(1, 1, (0, 0, 10, 10)), _gt(1, 1, (20, 0, 10, 10)), _gt(2, 2, (0, 0, 10, 10))]
    dt = [
        _dt(1, 1, (0, 0, 10, 10), 0.9),   # correct (IoU 1)
        _dt(1, 1, (1, 0, 10, 10), 0.8),   # duplicate of the first object: false
        _dt(2, 1, (0, 0, 10, 10), 0.7),   # right box, wrong class: false
        _dt(1, 1, (22, 0, 10, 10), 0.6),  # second object, IoU 80/120 = 0.67: correct
        _dt(2, 2, (5, 0, 10, 10), 0.5),   # IoU 50/150 = 0.33: false
    ]
    # Keeping >= t: t=0.9: TP 1 of 1, F1 = 2/(1+3) = 0.5; t=0.8: 2/(2+3) = 0.4; t=0.7: 2/(3+3)
    # = 0.333; t=0.6: TP 2 of 4, F1 = 4/(4+3) = 0.571; t=0.5: 4/(5+3) = 0.5. Best: t = 0.6.
    found = best_f1_threshold(gt, dt)
    assert found.score == 0.6
    assert found.f1 == pytest.approx(4 / 7)
    assert (found.precision, found.recall) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert (found.num_kept, found.num_predictions, found.num_gt) == (4, 5, 3)


def test_ties_take_the_higher_threshold_and_equal_scores_go_together():
    gt = [_gt(1, 1, (0, 0, 10, 10)), _gt(1, 1, (20, 0, 10, 10))]
    # t=0.9: F1 = 2/(1+2) = 0.667; t=0.5 keeps both 0.5s: TP 2 of 3, F1 = 4/5 = 0.8.
    dt = [_dt(1, 1, (0, 0, 10, 10), 0.9), _dt(1, 1, (50, 50, 5, 5), 0.5), _dt(1, 1, (20, 0, 10, 10), 0.5)]
    assert best_f1_threshold(gt, dt).score == 0.5
    # An exact tie: t=0.9 keeps 1 correct (F1 2/(1+2)), t=0.7 keeps 2 correct of 4 (F1 4/(4+2)).
    dt = [_dt(1, 1, (0, 0, 10, 10), 0.9), _dt(1, 1, (50, 50, 5, 5), 0.8), _dt(1, 1, (70, 50, 5, 5), 0.75),
          _dt(1, 1, (20, 0, 10, 10), 0.7)]
    found = best_f1_threshold(gt, dt)
    assert (found.score, found.f1, found.num_kept) == (0.9, pytest.approx(2 / 3), 1)


def test_crowd_regions_count_neither_way():
    gt = [_gt(1, 1, (0, 0, 10, 10)), _gt(1, 1, (0, 20, 40, 40), crowd=1)]
    dt = [_dt(1, 1, (5, 25, 10, 10), 0.9),  # inside the crowd region: ignored
          _dt(1, 1, (0, 0, 10, 10), 0.4)]
    found = best_f1_threshold(gt, dt)
    assert (found.score, found.f1, found.num_gt, found.num_predictions) == (0.4, 1.0, 1, 1)


def test_nothing_to_suggest():
    gt = [_gt(1, 1, (0, 0, 10, 10))]
    assert best_f1_threshold(gt, [_dt(1, 1, (50, 50, 10, 10), 0.9)]) is None
    assert best_f1_threshold(gt, []) is None


def _iou(a, b):
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    h = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - w * h
    return w * h / union if union > 0 else 0.0


def _brute_force(gt, dt):
    """For every candidate threshold, keep the detections >= it and match them again from
    scratch (plain loops), then take the best F1 (highest threshold on ties)."""
    num_gt = len(gt)
    best = None
    for t in sorted({d["score"] for d in dt}, reverse=True):
        kept = sorted([d for d in dt if d["score"] >= t], key=lambda d: -d["score"])
        used = set()
        tp = 0
        for d in kept:
            choice, best_iou = None, 0.5
            for j, g in enumerate(gt):
                if j in used or g["image_id"] != d["image_id"] or g["category_id"] != d["category_id"]:
                    continue
                v = _iou(d["bbox"], g["bbox"])
                if v >= best_iou and (choice is None or v > best_iou):
                    choice, best_iou = j, v
            if choice is not None:
                used.add(choice)
                tp += 1
        f1 = 2 * tp / (len(kept) + num_gt)
        if tp and (best is None or f1 > best[1] + 1e-12):
            best = (t, f1, tp, len(kept))
    return best


def _synthetic(seed):
    rng = np.random.default_rng(seed)
    gt, dt = [], []
    for image_id in range(1, 5):
        for _ in range(rng.integers(0, 5)):
            box = [float(v) for v in rng.integers(0, 40, 2)] + [float(v) for v in rng.integers(4, 20, 2)]
            cat = int(rng.integers(1, 3))
            gt.append(_gt(image_id, cat, box, ann_id=len(gt) + 1))
            for _ in range(rng.integers(0, 3)):  # near copies, some of the wrong class
                jitter = rng.normal(0, 3, 4)
                dt.append(_dt(image_id, int(rng.integers(1, 3)) if rng.random() < 0.3 else cat,
                              [box[0] + jitter[0], box[1] + jitter[1], max(1.0, box[2] + jitter[2]),
                               max(1.0, box[3] + jitter[3])], round(float(rng.random()), 2)))
        for _ in range(rng.integers(0, 3)):  # background
            dt.append(_dt(image_id, int(rng.integers(1, 3)),
                          [float(v) for v in rng.integers(0, 40, 2)] + [8.0, 8.0], round(float(rng.random()), 2)))
    return gt, dt


@pytest.mark.parametrize("seed", range(25))
def test_matches_a_brute_force_sweep(seed):
    gt, dt = _synthetic(seed)
    ref = _brute_force(gt, dt)
    found = best_f1_threshold(gt, dt, image_ids=range(1, 5))
    if ref is None:
        assert found is None
        return
    assert found.score == ref[0]
    assert found.f1 == pytest.approx(ref[1], abs=1e-12)
    assert found.num_kept == ref[3] and round(found.precision * found.num_kept) == ref[2]


@pytest.mark.parametrize("seed", range(8))
def test_true_positives_equal_cocoevals_matching(seed):
    gt, dt = _synthetic(100 + seed)
    gt.append(_gt(1, 1, (60, 60, 30, 30), crowd=1, ann_id=len(gt) + 1))
    dt.append(_dt(1, 1, (62, 62, 8, 8), 0.99))  # on the crowd region
    found = best_f1_threshold(gt, dt, image_ids=range(1, 5))
    coco_gt = _coco_from_dict({"images": [{"id": i, "width": 100, "height": 100} for i in range(1, 5)],
                               "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": gt})
    at = 0.0 if found is None else found.score
    matches = match_detections(coco_gt, predictions_coco(coco_gt, dt, score_threshold=at), max_dets=1000)
    true = sum(len(m.true_dt) for m in matches.values())
    counted = sum(len(m.true_dt) + len(m.false_dt) for m in matches.values())
    if found is None:  # nothing to suggest: COCOeval finds no correct detection at any score either
        assert true == 0
    else:
        assert (true, counted) == (round(found.precision * found.num_kept), found.num_kept)
        assert sum(len(m.ignored_dt) for m in matches.values()) == (found.score <= 0.99)  # the one on the crowd


def test_where_the_threshold_comes_from():
    stored = {"display_threshold": {"score": 0.2345, "f1": 0.6, "iteration": 1199, "dataset": "detrex_demo_val",
                                    "rule": "max F1 at IoU 0.5"}}
    assert choose_threshold(0.7, stored, "x.pth").describe() == "score threshold 0.7 (--threshold)"
    chosen = choose_threshold(None, stored, "out/model_final.pth")
    assert chosen.value == 0.2345
    assert chosen.describe() == ("score threshold 0.234 (max F1 at IoU 0.5 on detrex_demo_val, iteration 1199, "
                                 "from out/model_final.pth)")
    old = choose_threshold(None, {"thing_classes": ["a"]}, "old.pth")
    assert (old.value, old.describe()) == (DEFAULT_THRESHOLD, "score threshold 0.3 (no threshold stored in old.pth; default)")
    assert nothing_passes_message(0.23, 0.19) == (
        "no prediction reaches the threshold 0.23 (highest score 0.19); lower it with --threshold")


def test_run_metadata_keeps_the_threshold_across_a_resume():
    meta = RunMetadata({"num_classes": 3})
    meta.load_state_dict({"num_classes": 3, "display_threshold": {"score": 0.3}})
    assert meta.state_dict() == {"num_classes": 3, "display_threshold": {"score": 0.3}}
    fresh = RunMetadata({"num_classes": 3})
    fresh.load_state_dict({"num_classes": 5})  # the config's facts stay the current ones
    assert fresh.state_dict() == {"num_classes": 3}


def test_evaluation_records_the_threshold(tmp_path):
    """A real COCOEvaluator's ground truth and a results file made from it with known errors."""
    from detrex_lite.data.evaluation import build_coco_evaluator
    from detrex_lite.engine.display_threshold import THRESHOLD_FILE, record_display_threshold
    from tests.tools_analysis_data import VAL, perturbed_predictions, register_small_demo, write_predictions

    folder = register_small_demo(str(tmp_path))
    gt_json = os.path.join(folder, "annotations", "instances_val.json")
    results = perturbed_predictions(gt_json)
    out = tmp_path / "inference" / VAL
    write_predictions(results, str(out / "coco_instances_results.json"))
    evaluator = build_coco_evaluator(VAL, output_dir=str(out))
    run_meta = RunMetadata({"num_classes": 6})
    stored = record_display_threshold(evaluator, str(out), iteration=41, run_meta=run_meta)
    with open(gt_json) as f:
        expected = best_f1_threshold(json.load(f)["annotations"], results)
    assert stored["score"] == expected.score and stored["f1"] == round(expected.f1, 4)
    assert (stored["iteration"], stored["dataset"], stored["rule"]) == (41, VAL, "max F1 at IoU 0.5")
    assert run_meta.state_dict()["display_threshold"] == stored
    with open(out / THRESHOLD_FILE) as f:
        assert json.load(f) == stored
    # An evaluation whose predictions match nothing removes the earlier suggestion.
    write_predictions([dict(r, bbox=[0.0, 0.0, 1.0, 1.0]) for r in results], str(out / "coco_instances_results.json"))
    assert record_display_threshold(evaluator, str(out), VAL, iteration=83, run_meta=run_meta) is None
    assert "display_threshold" not in run_meta.state_dict() and not (out / THRESHOLD_FILE).exists()


def test_the_evaluation_at_the_end_precedes_model_final(tmp_path):
    """EvalHook before the PeriodicCheckpointer (as _do_train registers them): every checkpoint
    holds what the evaluation of its iteration put into the run metadata."""
    from detectron2.engine import TrainerBase

    from detrex_lite.engine.checkpoint import AtomicCheckpointer, PeriodicCheckpointer
    from detrex_lite.engine.display_threshold import EvalHook

    class Trainer(TrainerBase):
        def run_step(self):
            pass

    model = torch.nn.Linear(2, 2)
    meta = RunMetadata({})
    trainer = Trainer()
    evaluated = []

    def evaluate():
        evaluated.append((trainer.iter, trainer.storage.iter))
        meta.meta["display_threshold"] = {"score": 0.1, "iteration": trainer.iter}
        return {"bbox": {"AP": 1.0}}

    checkpointer = AtomicCheckpointer(model, str(tmp_path), meta=meta)
    trainer.register_hooks([EvalHook(3, evaluate), PeriodicCheckpointer(checkpointer, 3, max_iter=5)])
    trainer.train(0, 5)
    # every 3 iterations, and at the end, once; the last labelled max_iter, as detectron2 labels it
    assert evaluated == [(2, 2), (4, 5)]
    assert trainer.storage.history("bbox/AP").values() == [(1.0, 2), (1.0, 5)]
    stored = {name: torch.load(tmp_path / name, weights_only=True)["meta"]["display_threshold"]["iteration"]
              for name in ("model_0000002.pth", "model_final.pth")}
    assert stored == {"model_0000002.pth": 2, "model_final.pth": 4}
