"""tools/plot_metrics.py (detrex_lite.cli.plot_metrics, detrex_lite.analysis.training_curves):
the series it plots are the values in metrics.json, PNGs are written, partial files and runs
without evaluations are tolerated, a folder without metrics.json fails clearly."""
import json
import math
import os

import pytest

from detrex_lite.analysis import training_curves as plot_metrics
from detrex_lite.cli.plot_metrics import main as plot_metrics_main


def write_run(folder, records, partial_tail=None):
    """Writes records as detectron2's JSONWriter does (one object per line)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if partial_tail is not None:
            f.write(partial_tail)
    return str(folder)


def training_records(num_iters=100, log_period=20, eval_period=50, with_total=True):
    """Loss lines every log_period iterations and AP lines every eval_period iterations; the
    expected series are built independently of the tool from the same numbers."""
    records, loss, ap = [], {}, {m: {} for m in plot_metrics.AP_METRICS}
    for it in range(log_period - 1, num_iters, log_period):
        parts = {"loss_class": 1.0 / (it + 1), "loss_bbox": 0.5 + it * 1e-3, "loss_giou": 0.25}
        record = {"iteration": it, "lr": 1e-3, "data_time": 0.01, "time": 0.3, **parts}
        if with_total:
            record["total_loss"] = 10.0 + it  # deliberately not the sum: total_loss must win
            loss[it] = 10.0 + it
        else:
            loss[it] = sum(parts.values())
        records.append(record)
    for it in range(eval_period - 1, num_iters, eval_period):
        record = {"iteration": it}
        for k, metric in enumerate(plot_metrics.AP_METRICS):
            value = 3.0 * (it + 1) / num_iters + k
            record[f"bbox/{metric}"] = value
            ap[metric][it] = value
        records.append(record)
    return records, loss, ap


def as_series(points):
    its = sorted(points)
    return its, [points[i] for i in its]


@pytest.mark.parametrize("with_total", [True, False])
def test_extracted_series_equal_the_written_values(tmp_path, with_total):
    records, loss, ap = training_records(with_total=with_total)
    folder = write_run(tmp_path / "run", records)
    series = plot_metrics.load_run(folder)
    assert set(series) == {"loss", *plot_metrics.AP_METRICS, "lr", "data_time", "time",
                           "loss_class", "loss_bbox", "loss_giou"}
    its, values = series["loss"]
    exp_its, exp_values = as_series(loss)
    assert its == exp_its
    assert values == pytest.approx(exp_values, rel=1e-12)
    for metric in plot_metrics.AP_METRICS:
        assert series[metric] == as_series(ap[metric])


def test_partial_last_line_and_no_eval_yet(tmp_path):
    records, loss, _ = training_records(num_iters=60, eval_period=1000)  # no evaluation yet
    folder = write_run(tmp_path / "running", records, partial_tail='{"iteration": 79, "total_lo')
    series = plot_metrics.load_run(folder)
    assert "AP" not in series
    assert series["loss"] == as_series(loss)
    out = tmp_path / "plots"
    assert plot_metrics_main([folder, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["loss.png", "loss_terms.png", "lr.png", "time.png"]


def test_nan_ap_is_dropped_and_last_duplicate_wins(tmp_path):
    records = [
        {"iteration": 9, "bbox/AP": float("nan")},
        {"iteration": 19, "bbox/AP": 1.0},
        {"iteration": 19, "bbox/AP": 2.0},
    ]
    series = plot_metrics.extract_series(records)
    assert series == {"AP": ([19], [2.0])}
    assert not any(math.isnan(v) for v in series["AP"][1])


def test_two_runs_write_one_png_per_metric(tmp_path):
    a = write_run(tmp_path / "deformable", training_records()[0])
    b = write_run(tmp_path / "detr", training_records(num_iters=80)[0])
    out = tmp_path / "figs"
    assert plot_metrics_main([a, b, "--labels", "Deformable DETR", "DETR", "--out", str(out)]) == 0
    expected = sorted(f"{m}.png" for m in plot_metrics.METRICS + ("loss_terms", "lr", "time"))
    assert sorted(os.listdir(out)) == expected
    for name in expected:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_legend_labels_default_to_folder_names(tmp_path, monkeypatch):
    a = write_run(tmp_path / "run_a", training_records()[0])
    b = write_run(tmp_path / "run_b", training_records()[0])
    seen = {}
    monkeypatch.setattr(plot_metrics, "plot_runs", lambda runs, out, log=False: seen.update(runs) or [])
    assert plot_metrics_main([a, b + "/", "--out", str(tmp_path)]) == 0
    assert list(seen) == ["run_a", "run_b"]


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="not_a_run"):
        plot_metrics.load_run(str(empty))
    assert plot_metrics_main([str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and "not_a_run" in err


def test_label_count_must_match(tmp_path, capsys):
    a = write_run(tmp_path / "a", training_records()[0])
    assert plot_metrics_main([a, "--labels", "x", "y"]) == 2
    assert "2 labels for 1 runs" in capsys.readouterr().err


def test_summary_reports_the_last_evaluation(tmp_path):
    records, _, ap = training_records(num_iters=200, eval_period=50)
    folder = write_run(tmp_path / "run", records)
    out = tmp_path / "out"
    assert plot_metrics_main([folder, "--out", str(out), "--summary"]) == 0
    with open(out / "summary.json") as f:
        summary = json.load(f)["run"]
    last = max(ap["AP"])
    assert summary["final"]["eval_iteration"] == last == 199
    assert summary["iteration"] == 199
    for metric in plot_metrics.AP_METRICS:
        assert summary["final"][metric] == ap[metric][last]
    assert summary["AP_curve"] == [[it, ap["AP"][it]] for it in sorted(ap["AP"])]
    table = (out / "summary.md").read_text().splitlines()
    assert table[2] == "| run | 199 | " + " | ".join(f"{ap[m][199]:.1f}" for m in plot_metrics.AP_METRICS) + " |"


def detr_stage_record(iteration, num_aux=2, enc=True, scale=1.0):
    """A training line as the criterion and trainer log it: final, aux and encoder terms."""
    record = {"iteration": iteration, "lr": 2e-4, "grad_norm": 3.0 + iteration, "time": 0.5, "data_time": 0.01}
    for base, weight in (("loss_class", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)):
        record[base] = scale * weight
        for layer in range(num_aux):
            record[f"{base}_{layer}"] = scale * weight * (2 + layer)
        if enc:
            record[f"{base}_enc"] = scale * weight * 10
    return record


def test_loss_terms_are_grouped_by_stage():
    assert plot_metrics.split_loss_term("loss_class") == ("loss_class", "final")
    assert plot_metrics.split_loss_term("loss_giou_4") == ("loss_giou", "aux_4")
    assert plot_metrics.split_loss_term("loss_bbox_enc") == ("loss_bbox", "enc")
    assert plot_metrics.split_loss_term("loss_mask_dice") == ("loss_mask_dice", "final")
    assert plot_metrics.split_loss_term("total_loss") is None
    series = plot_metrics.extract_series([detr_stage_record(19), detr_stage_record(39, scale=0.5)])
    terms = plot_metrics.loss_terms(series)
    assert set(terms) == {"loss_class", "loss_bbox", "loss_giou"}
    assert terms["loss_bbox"] == {"final": "loss_bbox", "aux_0": "loss_bbox_0", "aux_1": "loss_bbox_1",
                                  "enc": "loss_bbox_enc"}
    assert series["loss_bbox_1"] == ([19, 39], [15.0, 7.5])
    assert series["grad_norm"] == ([19, 39], [22.0, 42.0])
    # no total_loss in these lines: the total is the sum of every term (final + aux + enc)
    assert series["loss"][1][0] == pytest.approx(9.0 * (1 + 2 + 3 + 10))


def test_resumed_run_keeps_the_last_attempt(tmp_path):
    """The first attempt logged up to 780 (evaluated at 399 and 699) and died; the resumed one
    restarted from the checkpoint at 600 and has reached 679. Its lines supersede the old ones
    from 600 on, also the old 680..780 and the old evaluation at 699."""
    first = [detr_stage_record(it, scale=1.0) for it in range(19, 800, 20)]
    first += [{"iteration": 399, "bbox/AP": 4.0}, {"iteration": 699, "bbox/AP": 9.0}]
    first.sort(key=lambda r: r["iteration"])
    second = [detr_stage_record(it, scale=0.25) for it in range(619, 680, 20)]
    second.append({"iteration": 599, "bbox/AP": 7.0})  # written last, but for an earlier iteration
    folder = write_run(tmp_path / "resumed", first + second)
    series = plot_metrics.load_run(folder)
    its, values = series["loss_class"]
    assert its == list(range(19, 600, 20)) + list(range(619, 680, 20))
    assert dict(zip(its, values))[659] == 0.5 and dict(zip(its, values))[579] == 2.0
    assert series["AP"] == ([399, 599], [4.0, 7.0])


def test_duplicate_evaluation_rows_keep_the_last():
    records = [{"iteration": 199, "bbox/AP": 1.0}, {"iteration": 199, "bbox/AP50": 3.0},
               {"iteration": 199, "bbox/AP": 2.0, "bbox/AP50": 4.0}]
    series = plot_metrics.extract_series(plot_metrics.drop_superseded(records))
    assert series["AP"] == ([199], [2.0]) and series["AP50"] == ([199], [4.0])


def test_two_runs_overlaid_with_loss_terms(tmp_path):
    import matplotlib.pyplot as plt

    a = write_run(tmp_path / "two_stage", [detr_stage_record(it) for it in range(19, 200, 20)])
    b = write_run(tmp_path / "one_stage", [detr_stage_record(it, num_aux=5, enc=False) for it in range(19, 100, 20)])
    out = tmp_path / "out"
    figures_before = set(plt.get_fignums())
    assert plot_metrics_main([a, b, "--labels", "two-stage", "one-stage", "--out", str(out), "--log"]) == 0
    assert sorted(os.listdir(out)) == ["grad_norm.png", "loss.png", "loss_terms.png", "lr.png", "time.png"]
    assert set(plt.get_fignums()) == figures_before  # every figure closed after saving


def test_default_output_is_the_first_runs_plots_folder(tmp_path, monkeypatch, capsys):
    """Without --out nothing is written to the current folder: the PNGs (and the summary) go to
    <first run>/plots, and the last line printed says how many and where."""
    a = write_run(tmp_path / "first", training_records()[0])
    b = write_run(tmp_path / "second", training_records()[0])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert plot_metrics_main([a, b, "--summary"]) == 0
    assert os.listdir(cwd) == []
    plots = os.path.join(a, "plots")
    expected = sorted(f"{m}.png" for m in plot_metrics.METRICS + ("loss_terms", "lr", "time"))
    assert sorted(os.listdir(plots)) == sorted(expected + ["summary.json", "summary.md"])
    assert not os.path.exists(os.path.join(b, "plots"))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"wrote {len(expected)} plots and summary.json, summary.md to {plots}"
