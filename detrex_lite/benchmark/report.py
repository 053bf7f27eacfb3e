"""What the benchmark reports: progress lines, the printed table, speed ratios (ours / HF, /
the baseline checkout, / the peak matmul rate) and the record of the machine it ran on."""
import datetime
import os
import platform
from typing import Dict, List

import torch
from tabulate import tabulate

__all__ = ["describe_row", "format_table", "compare", "compare_to_baseline", "add_peak_fractions", "environment"]


def add_peak_fractions(rows: List[Dict], gflop_per_image: float, peaks: Dict[str, float]) -> None:
    """Each inference row's achieved GFLOP/s (2 FLOPs per multiply-add) and its fraction of the
    matmul peak of the dtype its matrix products run in."""
    for r in rows:
        if r["mode"] != "inference" or not _measured(r):
            continue
        dtype = "bf16" if r.get("runs", r["precision"]) in ("bf16", "amp-bfloat16") else "fp32"
        achieved = 2 * gflop_per_image * r["images_per_s"]
        r["achieved_gflops"] = achieved
        r["peak_dtype"] = dtype
        r["fraction_of_peak"] = achieved / peaks[dtype]


def compare(rows: List[Dict]) -> List[Dict]:
    """Ours vs HF for each (mode, precision, batch): speed ratio (> 1: ours faster), memory ratio."""
    by_key = {(r["model"], r["mode"], r["precision"], r["batch_size"]): r for r in rows}
    out = []
    for r in rows:
        hf = by_key.get(("hf_transformers", r["mode"], r["precision"], r["batch_size"]))
        if r["model"] != "detrex_lite" or hf is None or not _measured(r) or not _measured(hf):
            continue
        speed = "images_per_s" if r["mode"] == "inference" else "iters_per_s"
        out.append({
            "mode": r["mode"], "precision": r["precision"], "batch_size": r["batch_size"],
            "detrex_lite": r[speed], "hf_transformers": hf[speed], "unit": speed,
            "speed_ratio": r[speed] / hf[speed], "peak_mem_ratio": r["peak_mem_mb"] / hf["peak_mem_mb"],
        })
    return out


def compare_to_baseline(rows: List[Dict], baseline_model: str) -> List[Dict]:
    """Each measured inference row's speed over the ``baseline_model`` row's (same batch size; the
    baseline is timed in fp32 only; > 1: faster than the baseline checkout)."""
    base = {r["batch_size"]: r for r in rows if r["model"] == baseline_model and _measured(r)}  # fp32 rows only
    out = []
    for r in rows:
        b = base.get(r["batch_size"])
        if r["model"] == baseline_model or r["mode"] != "inference" or not _measured(r) or b is None:
            continue
        out.append({"model": r["model"], "precision": r["precision"], "batch_size": r["batch_size"],
                    "speed_ratio": r["images_per_s"] / b["images_per_s"]})
    return out


def _measured(row: Dict) -> bool:
    return "error" not in row and "skipped" not in row


def environment(device: torch.device) -> Dict:
    """The device, library versions, threads, CPU flags and load, and the UTC date of a run."""
    from detrex_lite.inference import cpu_flags, cpu_name

    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
        **({"cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
           if device.type == "cpu" else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }


def describe_row(row: Dict) -> str:
    """One measurement as a line of progress, e.g. "detrex_lite inference fp32 batch 1: 2.10 img/s (476.2 ms/iter)"."""
    what = f"{row['model']} {row['mode']} {row['precision']} batch {row['batch_size']}"
    if "error" in row:
        return f"{what}: failed ({row['error']})"
    if "skipped" in row:
        return f"{what}: {row['skipped']}"
    speed = f"{row['images_per_s']:.2f} img/s" if row["mode"] == "inference" else f"{row['iters_per_s']:.2f} it/s"
    return f"{what}: {speed} ({row['ms_per_iter']:.1f} ms/iter)"


def format_table(report: Dict) -> str:
    """The header line(s) and a Markdown table of the rows. Speed ratio columns: "x fp32 eager"
    (over our model as built in fp32) when several models ran, "x HF fp32" (over transformers
    in fp32) with --compare-hf, "x <revision>" (over the baseline checkout) with --baseline-tree;
    each against the row of the same mode and batch size."""
    compared = "hf_transformers" in report
    multi_model = len({r.get("model", "detrex_lite") for r in report["results"]}) > 1
    with_cpu_time = not report["environment"]["device"].startswith("cuda")
    with_peaks = "matmul_peak_gflops" in report
    baseline = report.get("baseline")

    def fp32_speeds(model: str) -> Dict:
        return {
            (r["mode"], r["batch_size"]): r.get("images_per_s", r.get("iters_per_s"))
            for r in report["results"]
            if r.get("model", "detrex_lite") == model and r["precision"] == "fp32" and _measured(r)
        }

    references = [fp32_speeds("detrex_lite")] if multi_model else []
    references += [fp32_speeds("hf_transformers")] if compared else []
    references += [fp32_speeds(f"detrex_lite@{baseline['revision']}")] if baseline else []
    table = []
    for r in report["results"]:
        model = r.get("model", "detrex_lite")
        precision = r["precision"] if r.get("runs", r["precision"]) == r["precision"] else f"{r['precision']} (ran {r['runs']})"
        if "error" in r:
            cells = [r["mode"], precision, r["batch_size"], r["error"][:60], "-", "-"]
        elif "skipped" in r:
            cells = [r["mode"], precision, r["batch_size"], "skipped (see below)", "-", "-"]
        else:
            speed = f"{r['images_per_s']:.2f} img/s" if r["mode"] == "inference" else f"{r['iters_per_s']:.2f} it/s"
            cells = [r["mode"], precision, r["batch_size"], speed, f"{r['ms_per_iter']:.1f}", f"{r['peak_mem_mb']:.0f}"]
        if with_cpu_time:
            cells.append(f"{r['cpu_ms_per_iter']:.0f}" if "cpu_ms_per_iter" in r else "")
        if with_peaks:
            cells.append(f"{100 * r['fraction_of_peak']:.1f}% {r['peak_dtype']}" if "fraction_of_peak" in r else "")
        if multi_model:
            cells = [model] + cells
        speed = r.get("images_per_s", r.get("iters_per_s"))
        for reference in references:
            base = reference.get((r["mode"], r["batch_size"]))
            cells.append(f"{speed / base:.2f}x" if base and speed is not None else "")
        table.append(cells)
    env = report["environment"]
    on_cuda = env["device"].startswith("cuda")
    versions = f"torch {env['torch']}" + (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if on_cuda else "")
    threads = "" if on_cuda else f", {env['num_threads']} thread{'s' if env['num_threads'] != 1 else ''}"
    header = (
        f"{env['device_name']} ({env['device']}{threads}), {versions}, "
        f"image {report['image_size'][0]}x{report['image_size'][1]}, {report['iters']} timed iters "
        f"after {report['warmup']} warm-up"
    )
    if compared:
        hf = report["hf_transformers"]
        header += f"\ntransformers {hf['version']}, HF attention: {hf['attention']}"
    if "matmul_peak_gflops" in report:
        peaks = report["matmul_peak_gflops"]
        header += (
            f"\nmatmul 2048x2048 peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s; "
            f"model {report['model_gflop_per_image']:.1f} GFLOP (fvcore multiply-adds) per image"
        )
    if not on_cuda:
        flags = env.get("cpu_flags", {})
        header += "\nCPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
        load = report.get("load_average_start")
        if load is not None:
            header += f"; load average {load[0]:.2f} at start, {env['load_average'][0]:.2f} at end"
    headers = ["mode", "precision", "batch", "speed", "ms/iter", "peak MB" if on_cuda else "peak RSS MB"]
    if with_cpu_time:
        headers.append("CPU ms/iter")
    if with_peaks:
        headers.append("of peak")
    if multi_model:
        headers = ["model"] + headers + ["x fp32 eager"]
    headers += ["x HF fp32"] if compared else []
    headers += [f"x {baseline['revision']}"] if baseline else []
    notes = sorted({r["skipped"] for r in report["results"] if "skipped" in r})
    notes += [f"{r['model']} batch {r['batch_size']}: first two calls (compiling) took {r['compile_s']:.1f} s, not timed"
              for r in report["results"] if "compile_s" in r]
    return header + "\n" + tabulate(table, headers=headers, tablefmt="pipe") + "".join("\n" + n for n in notes)
