"""tools/benchmark.py (detrex_lite.benchmark) on a tiny Deformable DETR: the table/JSON it writes
and that its training step really trains."""
import json
import os

import pytest
import torch
from detectron2.config import instantiate

from detrex_lite.benchmark.hf_adapter import build_hf_model
from detrex_lite.benchmark.measure import bench_train, build_optimizer, synthetic_inputs
from detrex_lite.benchmark.options import parse_benchmark_args
from detrex_lite.benchmark.runner import run_benchmark
from tools_tiny_models import REPO, save_config, tiny_deformable_detr_config


def benchmark_main(argv):
    """What ``python tools/benchmark.py ARGV`` runs."""
    return run_benchmark(parse_benchmark_args(argv))


def test_benchmark_report(tmp_path, capsys):
    cfg_path = save_config(tiny_deformable_detr_config(), str(tmp_path / "tiny.yaml"))
    out = tmp_path / "bench.json"
    report = benchmark_main([
        "--config-file", cfg_path, "--device", "cpu", "--image-size", "64", "64", "--batch-sizes", "1", "2",
        "--iters", "2", "--warmup", "1", "--num-threads", "1", "--force-bf16", "--json", str(out),
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
    optimizer = build_optimizer(cfg, model)
    # The config's optimizer, with its lr multipliers (backbone at 0.1x).
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([2e-5, 2e-4])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    inputs = synthetic_inputs(2, (64, 80), model.num_classes, True, g)
    for item in inputs:
        boxes = item["instances"].gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    result = bench_train(model, optimizer, torch.device("cpu"), 2, (64, 80), model.num_classes, None, 1, 0, g)
    assert result["iters_per_s"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert "class_embed.0.weight" in changed and any(n.startswith("backbone.") for n in changed)


def _tiny_for_hf(variant):
    cfg = tiny_deformable_detr_config(variant)
    # transformers refuses one decoder layer (its weight tying of bbox_embed.0 finds nothing to tie).
    cfg.model.transformer.num_decoder_layers = 2
    return cfg


def _count(module, prefix=""):
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("variant", ["one_stage", "two_stage"])
def test_hf_model_has_our_architecture(variant):
    cfg = _tiny_for_hf(variant)
    torch.manual_seed(0)
    ours = instantiate(cfg.model)
    hf = build_hf_model(cfg, ours.num_classes, torch.device("cpu")).hf
    c, t = hf.config, cfg.model.transformer
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.decoder_attention_heads) == (
        32, 1, 2, 2, 2) == (t.d_model, t.num_encoder_layers, t.num_decoder_layers, t.nhead, t.nhead)
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim, c.num_feature_levels, c.encoder_n_points, c.decoder_n_points) == (
        t.dim_feedforward, t.dim_feedforward, t.num_feature_levels, t.enc_n_points, t.dec_n_points)
    assert (c.num_queries, c.two_stage, c.with_box_refine, c.auxiliary_loss, c.num_labels) == (
        12, variant == "two_stage", variant == "two_stage", True, ours.num_classes)
    assert not c.use_pretrained_backbone and c.backbone_config.model_type == "resnet"
    assert c.backbone_config.depths == [2, 2, 2, 2] and c.backbone_config.layer_type == "basic"
    # Parameter counts, part by part and in total.
    assert _count(hf, "model.encoder.") == _count(ours, "transformer.encoder.") > 0
    assert _count(hf, "model.decoder.layers.") == _count(ours, "transformer.decoder.") > 0
    assert _count(hf, "model.input_proj.") == _count(ours, "neck.")
    assert _count(hf, "model.backbone.") == _count(ours, "backbone.")
    assert _count(hf) == _count(ours)


def test_compare_hf_rows_and_ratios(tmp_path, capsys):
    cfg_path = save_config(_tiny_for_hf("one_stage"), str(tmp_path / "tiny.yaml"))
    out = tmp_path / "bench.json"
    report = benchmark_main([
        "--config-file", cfg_path, "--device", "cpu", "--image-size", "96", "96", "--batch-sizes", "1", "2",
        "--iters", "1", "--warmup", "1", "--num-threads", "1", "--precisions", "fp32", "--compare-hf",
        "--json", str(out),
    ])
    assert json.load(open(out)) == json.loads(json.dumps(report))
    rows = [(r["model"], r["mode"], r["batch_size"]) for r in report["results"]]
    assert rows == [
        ("detrex_lite", "inference", 1), ("hf_transformers", "inference", 1),
        ("detrex_lite", "inference", 2), ("hf_transformers", "inference", 2),
        ("detrex_lite", "train", 2), ("hf_transformers", "train", 2),
    ]
    for r in report["results"]:
        assert "error" not in r, r
    speeds = {(r["model"], r["mode"], r["batch_size"]): r.get("images_per_s", r.get("iters_per_s"))
              for r in report["results"]}
    assert [(c["mode"], c["batch_size"]) for c in report["comparison"]] == [("inference", 1), ("inference", 2), ("train", 2)]
    for c in report["comparison"]:
        ours, hf = speeds[("detrex_lite", c["mode"], c["batch_size"])], speeds[("hf_transformers", c["mode"], c["batch_size"])]
        assert (c["detrex_lite"], c["hf_transformers"]) == (ours, hf)
        assert c["speed_ratio"] == pytest.approx(ours / hf)
    hf = report["hf_transformers"]
    assert hf["version"] and hf["attention"] and hf["parameters"] == hf["detrex_lite_parameters"]
    assert hf["config"]["d_model"] == 32
    table = capsys.readouterr().out
    assert "hf_transformers" in table and "x HF fp32" in table


def test_baseline_checkout_rows_and_skipped_emulated_bf16(tmp_path, capsys, monkeypatch):
    # --baseline-tree times the model as another checkout builds it (here this one, in a
    # subprocess), and on a CPU without native bf16 the bf16 rows are skipped, not run emulated.
    import detrex_lite.inference

    monkeypatch.setattr(detrex_lite.inference, "bf16_hardware_support", lambda: None)
    cfg_path = save_config(tiny_deformable_detr_config(), str(tmp_path / "tiny.yaml"))
    report = benchmark_main([
        "--config-file", cfg_path, "--device", "cpu", "--image-size", "64", "64", "--batch-sizes", "1",
        "--modes", "inference", "--precisions", "fp32", "bf16", "--iters", "1", "--warmup", "0",
        "--num-threads", "1", "--fast", "--baseline-tree", REPO, "--json", str(tmp_path / "bench.json"),
    ])
    baseline = f"detrex_lite@{report['baseline']['revision']}"
    rows = [(r["model"], r["precision"]) for r in report["results"]]
    assert rows == [
        (baseline, "fp32"), ("detrex_lite", "fp32"), ("detrex_lite-fast", "fp32"),
        ("detrex_lite", "amp-bfloat16"), ("detrex_lite-fast", "bf16"),
    ]
    measured = {r["model"]: r for r in report["results"][:3]}
    for r in measured.values():
        assert "error" not in r and "skipped" not in r and r["images_per_s"] > 0 and r["cpu_ms_per_iter"] > 0
    assert "no native bf16" in report["results"][3]["skipped"]
    assert report["results"][4]["runs"] == "fp32" and "fp32 rows" in report["results"][4]["skipped"]
    ratios = {c["model"]: c["speed_ratio"] for c in report["baseline_comparison"]}
    assert ratios == pytest.approx({
        m: measured[m]["images_per_s"] / measured[baseline]["images_per_s"] for m in ("detrex_lite", "detrex_lite-fast")
    })
    table = capsys.readouterr().out
    assert f"x {report['baseline']['revision']}" in table and "skipped (see below)" in table


def test_overrides_after_the_flags_and_the_deprecated_spelling(capsys):
    args = parse_benchmark_args(["--config-file", "c.py", "--batch-sizes", "1", "--fast", "model.num_queries=10", "+x=1"])
    assert args.opts == ["model.num_queries=10", "+x=1"] and args.batch_sizes == [1] and args.fast
    assert capsys.readouterr().err == ""
    args = parse_benchmark_args(["--config-file", "c.py", "--batch-sizes", "1", "4", "--", "model.num_queries=10"])
    assert args.opts == ["model.num_queries=10"] and args.batch_sizes == [1, 4]
    args = parse_benchmark_args(["--config-file", "c.py", "--opts", "model.num_queries=10"])
    assert args.opts == ["model.num_queries=10"]
    assert "--opts is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        parse_benchmark_args(["--config-file", "c.py", "model.num_queries=10", "--fast"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flag --fast comes after the config override 'model.num_queries=10'" in err


def test_time_checkout_applies_the_overrides_in_the_other_checkout(tmp_path, capsys):
    # The tool's path (tools/time_checkout.py) and --baseline-tree's share the subprocess; the
    # overrides reach the other checkout's config: a d_model the 2 heads cannot split fails there.
    from detrex_lite.benchmark.checkout import time_inputs_in_checkout, time_checkout_main
    from detrex_lite.benchmark.options import parse_time_checkout_args

    cfg_path = save_config(tiny_deformable_detr_config(), str(tmp_path / "tiny.yaml"))
    inputs = synthetic_inputs(1, (64, 64), 1, False, torch.Generator().manual_seed(0))
    torch.save(inputs, str(tmp_path / "inputs.pt"))
    result = time_checkout_main(parse_time_checkout_args([
        "--tree", REPO, "--config-file", cfg_path, "--inputs", str(tmp_path / "inputs.pt"), "--iters", "1",
        "--warmup", "0", "--num-threads", "1", "model.num_queries=10",
    ]))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["num_threads"] == 1 and result["images_per_s"] == pytest.approx(1000 / result["ms_per_iter"])
    assert os.path.realpath(result["imported_from"]) == os.path.realpath(os.path.join(REPO, "detrex_lite"))
    with pytest.raises(RuntimeError, match="time_checkout.py on .* failed: .*divisible"):
        time_inputs_in_checkout(REPO, cfg_path, inputs, iters=1, warmup=0, opts=["model.transformer.d_model=31"])
