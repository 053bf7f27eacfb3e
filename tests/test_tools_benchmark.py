"""tools/benchmark.py on a tiny Deformable DETR: the table/JSON it writes and that its training
step really trains."""
import json

import pytest
import torch
from detectron2.config import instantiate

from tools_tiny_models import load_tool, save_config, tiny_deformable_detr_config

benchmark = load_tool("benchmark")


def test_benchmark_report(tmp_path, capsys):
    cfg_path = save_config(tiny_deformable_detr_config(), str(tmp_path / "tiny.yaml"))
    out = tmp_path / "bench.json"
    report = benchmark.main([
        "--config-file", cfg_path, "--device", "cpu", "--image-size", "64", "64", "--batch-sizes", "1", "2",
        "--iters", "2", "--warmup", "1", "--num-threads", "1", "--json", str(out),
    ])
    assert json.load(open(out)) == json.loads(json.dumps(report))
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["date"]
    rows = [(r["mode"], r["precision"], r["batch_size"]) for r in report["results"]]
    assert rows == [
        ("inference", "fp32", 1), ("inference", "fp32", 2), ("train", "fp32", 2),
        ("inference", "amp-bfloat16", 1), ("inference", "amp-bfloat16", 2), ("train", "amp-bfloat16", 2),
    ]
    for r in report["results"]:
        assert "error" not in r, r
        assert r["peak_mem_mb"] > 0
        if r["mode"] == "inference":
            assert r["images_per_s"] == pytest.approx(r["batch_size"] * 1000 / r["ms_per_iter"])
        else:
            assert r["iters_per_s"] == pytest.approx(1000 / r["ms_per_iter"])
    table = capsys.readouterr().out
    assert "img/s" in table and "it/s" in table and "amp-bfloat16" in table


def test_train_step_updates_weights_and_inputs_fit_the_model():
    cfg = tiny_deformable_detr_config()
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    optimizer = benchmark.build_optimizer(cfg, model)
    # The config's optimizer, with its lr multipliers (backbone at 0.1x).
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([2e-5, 2e-4])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    inputs = benchmark.synthetic_inputs(2, (64, 80), model.num_classes, True, g)
    for item in inputs:
        boxes = item["instances"].gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    result = benchmark.bench_train(model, optimizer, torch.device("cpu"), 2, (64, 80), model.num_classes, None, 1, 0, g)
    assert result["iters_per_s"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert "class_embed.0.weight" in changed and any(n.startswith("backbone.") for n in changed)
