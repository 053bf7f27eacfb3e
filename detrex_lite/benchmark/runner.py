"""``tools/benchmark.py``: builds the models a run compares, plans its rows (model x mode x
precision x batch size) and times them, in rounds for inference (see
:mod:`detrex_lite.benchmark.options` for what every flag does)."""
import logging
import os
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import instantiate

from detrex_lite.checkpoint import load_weights
from detrex_lite.predictor import load_config
from detrex_lite.utils import json_io
from detrex_lite.utils.logger import setup_logger

from .checkout import git_revision, time_inputs_in_checkout
from .hf_adapter import build_hf_model, hf_summary
from .measure import (
    amp_dtype,
    bench_compiled,
    bench_inference,
    bench_train,
    build_optimizer,
    matmul_peak_gflops,
    model_gflop,
    synthetic_inputs,
)
from .onnxruntime_adapter import OnnxRuntimeDetector
from .report import add_peak_fractions, compare, compare_to_baseline, describe_row, environment, format_table

__all__ = ["run", "run_benchmark"]

logger = logging.getLogger("detrex_lite.benchmark")


def time_baseline(tree: str, args, inputs: List[Dict]) -> Dict:
    """Times ``inputs`` through the model as the checkout ``tree`` builds it (same config path,
    overrides, seed, threads, iterations and allocator setting), in a subprocess whose
    ``detrex_lite`` is ``tree``'s (:func:`detrex_lite.benchmark.checkout.time_checkout`)."""
    result = time_inputs_in_checkout(
        tree, args.config_file, inputs, iters=args.iters, warmup=args.warmup, opts=args.opts, seed=args.seed,
        num_threads=torch.get_num_threads(), tune_allocator=args.tune_allocator,
    )
    if os.path.realpath(result["imported_from"]) != os.path.realpath(os.path.join(tree, "detrex_lite")):
        raise RuntimeError(f"--baseline-tree: the subprocess imported detrex_lite from {result['imported_from']}, not {tree}")
    return {k: result[k] for k in ("images_per_s", "ms_per_iter", "cpu_ms_per_iter", "peak_mem_mb")}


def measure_in_rounds(plan: List[Tuple[Dict, Optional[Callable], tuple]], rounds: int, device: torch.device) -> List[Dict]:
    """Times the rows of ``plan`` ((row, measurement function or None when skipped, its
    arguments)) and returns the rows with their numbers, each also logged.

    Each round times every row once, in order; a row reports its median round (by wall time), so
    slow drift and bursts of load on a shared machine hit all rows alike. One failing
    measurement (e.g. out of memory at batch 4) is reported in its row, not fatal."""
    results: Dict[int, List[Dict]] = {i: [] for i in range(len(plan))}
    for round_index in range(rounds):
        for i, (row, fn, fn_args) in enumerate(plan):
            if fn is None or "error" in row:
                continue
            if round_index > 0 and fn is bench_compiled:
                fn = bench_inference  # compiled in the first round
            try:
                results[i].append(fn(*fn_args))
            except (RuntimeError, ValueError) as err:
                logger.error("%s failed: %s", row, err)
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    rows = []
    for i, (row, _, _) in enumerate(plan):
        if results[i] and "error" not in row:
            ordered = sorted(results[i], key=lambda r: r["ms_per_iter"])
            row.update({k: v for k, v in ordered[(len(ordered) - 1) // 2].items() if k != "compile_s"})
            if "compile_s" in results[i][0]:
                row["compile_s"] = results[i][0]["compile_s"]
            if rounds > 1:
                row["rounds_ms_per_iter"] = [r["ms_per_iter"] for r in results[i]]
        rows.append(row)
        logger.info(describe_row(row))
    return rows


def emulated_bf16_note(device: torch.device, force_bf16: bool) -> Optional[str]:
    """The note that skips bf16 autocast rows on a CPU without bf16 instructions (None: run them).

    There bf16 runs emulated products (~0.3-0.6 GFLOP/s on an AVX2 machine): a single 800x1333
    image would take the better part of an hour."""
    if device.type != "cpu" or force_bf16:
        return None
    from detrex_lite.inference import bf16_hardware_support, cpu_name

    if bf16_hardware_support() is not None:
        return None
    return (
        f"skipped: no native bf16 on this CPU ({cpu_name()}: no AMX, AVX-512 BF16 or Arm BF16); "
        "--force-bf16 runs it emulated"
    )


def run(args) -> Dict:
    """The report of a benchmark run with the parsed arguments ``args`` (rows, ratios, environment)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = load_config(args.config_file, args.opts)
    torch.manual_seed(args.seed)
    models = {"detrex_lite": instantiate(cfg.model).to(device)}
    if args.checkpoint:
        load_weights(models["detrex_lite"], args.checkpoint, purpose="predict", cfg=cfg)
    num_classes = int(getattr(models["detrex_lite"], "num_classes", 1))
    if args.compare_hf:
        models["hf_transformers"] = build_hf_model(cfg, num_classes, device)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []
    extra: Dict = {"load_average_start": list(os.getloadavg()), "tune_allocator": bool(args.tune_allocator)}
    if device.type == "cpu" and args.peaks:
        extra["matmul_peak_gflops"] = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
        extra["model_gflop_per_image"] = model_gflop(models["detrex_lite"], args.image_size)
        logger.info("matmul peaks (GFLOP/s): %s; model: %.1f GFLOP (fvcore)", extra["matmul_peak_gflops"],
                    extra["model_gflop_per_image"])
    onnx_model = None
    if args.onnx:
        with tempfile.TemporaryDirectory(prefix="detrex_lite_bench_") as onnx_dir:  # the session keeps the graph
            onnx_model = OnnxRuntimeDetector(
                models["detrex_lite"], args.image_size, os.path.join(onnx_dir, "model.onnx"), torch.get_num_threads()
            )
        extra["onnxruntime"] = onnx_model.version
    fast_models: Dict[tuple, torch.nn.Module] = {}

    def fast_model(precision: str, compiled: bool = False):
        """The fast mode for ``precision`` ("fp32"/"bf16"), eager or compiled, built once."""
        from detrex_lite.inference import optimize_for_inference

        key = (precision, compiled)
        if key not in fast_models:
            start = time.perf_counter()
            fast = optimize_for_inference(models["detrex_lite"], precision, force_bf16=args.force_bf16, compile=compiled)
            fast_models[key] = fast
            name = precision + ("-compiled" if compiled else "")
            extra.setdefault("fast_mode_setup_s", {})[name] = time.perf_counter() - start
        return fast_models[key]

    skip_emulated_bf16 = emulated_bf16_note(device, args.force_bf16)
    baseline = None
    if args.baseline_tree:
        baseline = {"tree": os.path.abspath(args.baseline_tree), "revision": git_revision(args.baseline_tree)}
        extra["baseline"] = baseline

    for precision in args.precisions:
        if precision == "bf16":
            dtype = torch.bfloat16
        else:
            dtype = amp_dtype(device, args.amp_dtype) if precision == "amp" else None
        label = precision if dtype is None else f"amp-{str(dtype).replace('torch.', '')}"
        if "inference" in args.modes:
            for bs in args.batch_sizes:
                inputs = synthetic_inputs(bs, args.image_size, 1, False, generator)  # the same for every model
                timed = [(name, model, label, dtype, {}) for name, model in models.items()]
                if args.fast and precision in ("fp32", "bf16"):
                    fast = fast_model(precision)
                    info = {"runs": fast.inference_precision}
                    if fast.inference_precision != precision:
                        # No native bf16: the fast mode is the fp32 one, timed in the fp32 rows.
                        info["skipped"] = "the fast mode runs fp32 on this CPU (no native bf16): see its fp32 rows"
                    timed.insert(1, ("detrex_lite-fast", fast, precision, None, info))
                    if args.compile and "skipped" not in info:
                        compiled = fast_model(precision, compiled=True)
                        timed.insert(2, ("detrex_lite-fast-compiled", compiled, precision, None,
                                         {"runs": compiled.inference_precision, "compile_warmup": True}))
                if onnx_model is not None and precision == "fp32":
                    timed.append(("onnxruntime", onnx_model, "fp32", None, {}))
                plan = []  # (row, measurement function or None when skipped, its arguments)
                if baseline is not None and precision == "fp32":
                    row = {"model": f"detrex_lite@{baseline['revision']}", "mode": "inference", "precision": "fp32",
                           "batch_size": bs}
                    plan.append((row, time_baseline, (baseline["tree"], args, inputs)))
                for name, model, row_label, row_dtype, info in timed:
                    row = {"model": name, "mode": "inference", "precision": row_label, "batch_size": bs, **info}
                    if row_dtype == torch.bfloat16 and skip_emulated_bf16:
                        row["skipped"] = skip_emulated_bf16
                    bench = bench_compiled if row.pop("compile_warmup", False) else bench_inference
                    bench_args = (model, device, bs, args.image_size, row_dtype, args.iters, args.warmup, generator, inputs)
                    plan.append((row, None if "skipped" in row else bench, bench_args))
                rows += measure_in_rounds(plan, args.rounds, device)
        if "train" in args.modes:
            inputs = synthetic_inputs(args.train_batch_size, args.image_size, num_classes, True, generator)
            for name, model in models.items():
                optimizer = build_optimizer(cfg, model)  # the config's optimizer and lr groups, for both
                row = {"model": name, "mode": "train", "precision": label, "batch_size": args.train_batch_size}
                bench_args = (model, optimizer, device, args.train_batch_size, args.image_size, num_classes, dtype,
                              args.iters, args.warmup, generator, inputs)
                rows += measure_in_rounds([(row, bench_train, bench_args)], 1, device)
                del optimizer  # its state would count in the next measurement's peak memory
    report = {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "image_size": list(args.image_size),
        "iters": args.iters,
        "warmup": args.warmup,
        "environment": environment(device),
        "results": rows,
        **extra,
    }
    if "matmul_peak_gflops" in extra:
        add_peak_fractions(rows, extra["model_gflop_per_image"], extra["matmul_peak_gflops"])
    if baseline is not None:
        report["baseline_comparison"] = compare_to_baseline(rows, f"detrex_lite@{baseline['revision']}")
    if args.compare_hf:
        report["hf_transformers"] = hf_summary(models["hf_transformers"], models["detrex_lite"])
        report["comparison"] = compare(rows)
    return report


def run_benchmark(args) -> Dict:
    """``tools/benchmark.py``: :func:`run` with the parsed arguments
    (:func:`detrex_lite.benchmark.options.parse_benchmark_args`), the table printed and the JSON
    written; returns the report."""
    setup_logger()
    threads = torch.get_num_threads()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.tune_allocator:
        from detrex_lite.inference import tune_cpu_allocator

        if not tune_cpu_allocator():
            logger.warning("--tune-allocator: not glibc; the allocator is left as it is")
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    print(format_table(report))
    if args.json:
        json_io.dump(report, args.json)
    return report
