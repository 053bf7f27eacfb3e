"""The analysis tools on what an evaluation really writes: a tiny Deformable DETR evaluated by
the engine's do_test on a 12-image demo set leaves
<output_dir>/inference/<dataset>/coco_instances_results.json; analyze_results and
visualize_results read it, and the AP they report is the evaluator's."""
import json
import os

import pytest
import torch
from detectron2.config import instantiate

from detrex_lite.engine import do_test
from detrex_lite.apps import analyze_results, visualize_results
from tests.tools_analysis_data import TRAIN, VAL, register_small_demo
from tests.tools_tiny_models import tiny_deformable_detr_config


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_run")
    register_small_demo(str(root))
    cfg = tiny_deformable_detr_config("box_refine")
    cfg.dataloader.train.dataset.names = TRAIN
    cfg.dataloader.test.dataset.names = VAL
    cfg.train.output_dir = str(root / "run")
    cfg.train.device = "cpu"
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        results = do_test(cfg, model)
    path = os.path.join(cfg.train.output_dir, "inference", VAL, "coco_instances_results.json")
    return results["bbox"], path


def test_analysis_of_an_evaluated_run(evaluated_run, tmp_path, capsys):
    metrics, path = evaluated_run
    assert os.path.isfile(path)
    with open(path) as f:
        predictions = json.load(f)
    assert len(predictions) == 12 * 10  # select_box_nums_for_evaluation = 10 per image
    out = analyze_results.run(path, VAL, str(tmp_path / "analysis"), class_plots=False)
    rows = {(r["class"], r["area"]): r for r in out["error_analysis"]}
    assert rows[("all classes", "all")]["C50"] == pytest.approx(metrics["AP50"], abs=1e-3)
    assert rows[("all classes", "all")]["C75"] == pytest.approx(metrics["AP75"], abs=1e-3)
    assert out["per_class_ap"]["overall"]["AP"] == pytest.approx(metrics["AP"], abs=1e-3)
    assert sum(r["num_predictions"] for r in out["per_class_ap"]["per_class"]) == 120
    assert f"{VAL}: 120 predictions on 12 of 12 images" in capsys.readouterr().out
    drawn = visualize_results.run(path, VAL, str(tmp_path / "worst"), threshold=0.0, worst=2)
    assert len(drawn) == 2 and all(os.path.isfile(p) for p, _ in drawn)
    # at threshold 0 every prediction is drawn: each is either correct or false
    assert all(len(m.true_dt) + len(m.false_dt) + len(m.ignored_dt) == 10 for _, m in drawn)
