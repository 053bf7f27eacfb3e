#!/usr/bin/env python
r"""Whole-model speed and memory: inference images/s (batch 1 and 4, as in the Deformable DETR
paper) and training iterations/s, in fp32 and AMP, on CPU or GPU.

    python tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --device cuda --json output/benchmark.json

Inputs are synthetic (random pixels at ``--image-size``, a few random boxes per image for
training), so the numbers measure the model, not the data loader. Timings exclude ``--warmup``
iterations and synchronise CUDA before reading the clock. Peak memory is
``torch.cuda.max_memory_allocated`` for each measurement on GPU; on CPU it is the process's peak
resident set size so far (it never goes down, so read it as an upper bound).
Weights are not loaded unless ``--checkpoint`` is given (speed does not depend on them; the
shared strict loader then also checks that they fit the config); ``--opts`` changes the model.

``--compare-hf`` also builds Hugging Face transformers' ``DeformableDetrForObjectDetection`` with
the config's architecture (random weights, torchvision-style ResNet from ``ResNetConfig``) and
times it in the same process on the same inputs, batch sizes, precisions and iterations, one
measurement of ours then the same one of HF; the table and JSON get both rows and the ratio.

CPU inference (docs/inference.md): ``--fast`` adds our fast mode (``optimize_for_inference``),
``--compile`` its ``torch.compile``'d version (compile time reported apart), ``--onnx``
onnxruntime on our exported model, ``--peaks`` the machine's own fp32/bf16 matmul peaks and each
row's fraction of its dtype's peak, ``--baseline-tree DIR`` the model as an older checkout builds
it (tools/time_checkout.py in a subprocess, same inputs), for "x times the previous build" in the
same run. bf16 rows are skipped on CPUs without native bf16 (emulated, ~100x slower than fp32)
unless ``--force-bf16``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402
import detrex_lite  # noqa: E402,F401  (first: imports detectron2 without its torch.jit warnings)

from detectron2.config import instantiate  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from tabulate import tabulate  # noqa: E402

from detrex_lite.checkpoint import load_weights  # noqa: E402
from detrex_lite.predictor import load_config  # noqa: E402
from detrex_lite.utils import json_io  # noqa: E402
from detrex_lite.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("detrex_lite.benchmark")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="inference batch sizes")
    parser.add_argument("--train-batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="inference: time every row this many times, interleaved (row A, row B, ..., then again), and "
        "report each row's median round; for ratios on a shared machine whose load drifts",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "amp"], choices=["fp32", "amp", "bf16"],
        help="fp32; amp (autocast, --amp-dtype); bf16: the CPU fast mode's bf16 for detrex_lite-fast "
        "(--fast) and bf16 autocast for the other models",
    )
    parser.add_argument(
        "--amp-dtype", default=None, choices=["float16", "bfloat16"],
        help="autocast dtype for amp (default: float16 on CUDA, bfloat16 on CPU)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-hf", action="store_true",
        help="also time transformers' DeformableDetrForObjectDetection with the same architecture",
    )
    parser.add_argument(
        "--checkpoint", default=None,
        help="weights to load into the model first (strictly, as for prediction); default: random weights",
    )
    cpu = parser.add_argument_group("CPU inference mode (detrex_lite.inference)")
    cpu.add_argument(
        "--fast", action="store_true",
        help="also time detrex_lite-fast: optimize_for_inference(model, precision) (folded FrozenBN, "
        "channels_last; bf16 weights/activations for --precisions bf16 where the CPU has native bf16)",
    )
    cpu.add_argument(
        "--force-bf16", action="store_true",
        help="run bf16 even where the CPU has no native bf16 (the fast mode's bf16, and bf16 autocast rows, "
        "which are otherwise skipped there: emulated bf16 matrix products run ~100x slower than fp32)",
    )
    cpu.add_argument(
        "--compile", action="store_true",
        help="also time detrex_lite-fast-compiled: the fast mode with torch.compile (its first calls, which "
        "compile, are reported as compile_s and not timed)",
    )
    cpu.add_argument(
        "--baseline-tree", default=None, metavar="DIR",
        help="also time the model as another detrex_lite checkout (e.g. a git worktree of an older "
        "revision, with its operator built) builds it, on the same inputs, in a subprocess "
        "(tools/time_checkout.py); rows 'detrex_lite@<revision>'",
    )
    cpu.add_argument(
        "--tune-allocator", action="store_true",
        help="detrex_lite.inference.tune_cpu_allocator() first (glibc keeps freed memory; for every model)",
    )
    cpu.add_argument(
        "--onnx", action="store_true",
        help="also time onnxruntime (CPU execution provider) on the model exported with detrex_lite.export (fp32 rows)",
    )
    cpu.add_argument(
        "--peaks", action="store_true",
        help="measure the fp32 and bf16 matmul peaks (2048x2048) and the model's FLOPs (fvcore), and "
        "report each row's fraction of the peak of its dtype",
    )
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides, key=value")
    return parser


def synthetic_inputs(
    batch_size: int, image_size: Sequence[int], num_classes: int, with_targets: bool, generator: torch.Generator
) -> List[Dict]:
    """detectron2-style model inputs: random RGB uint8 images, and 1-5 random boxes each."""
    h, w = image_size
    inputs = []
    for _ in range(batch_size):
        item = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator), "height": h, "width": w}
        if with_targets:
            n = int(torch.randint(1, 6, (1,), generator=generator))
            xy0 = torch.rand(n, 2, generator=generator) * 0.7
            wh = 0.05 + torch.rand(n, 2, generator=generator) * 0.25
            boxes = torch.cat([xy0, xy0 + wh], dim=1) * torch.tensor([w, h, w, h], dtype=torch.float32)
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(boxes)
            instances.gt_classes = torch.randint(0, num_classes, (n,), generator=generator)
            item["instances"] = instances
        inputs.append(item)
    return inputs


def amp_dtype(device: torch.device, name: Optional[str]) -> torch.dtype:
    """float16 on CUDA and bfloat16 on CPU unless ``name`` says otherwise."""
    if name is None:
        name = "float16" if device.type == "cuda" else "bfloat16"
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype``, or a no-op for fp32 (``dtype`` None)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _timed(step, iters: int, warmup: int, device: torch.device, cpu_seconds: Optional[List[float]] = None) -> float:
    """Seconds per call of ``step`` averaged over ``iters`` calls after ``warmup`` calls.
    ``cpu_seconds`` (a list) receives the process's CPU time per call (all threads, user + system)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    _sync(device)
    if cpu_seconds is not None:
        cpu_seconds.append((time.process_time() - cpu_start) / iters)
    return (time.perf_counter() - start) / iters


def bench_inference(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=None) -> Dict:
    """Eval-mode forward passes on ``batch_size`` images; ``dtype`` None is fp32, else autocast."""
    model.eval()
    if inputs is None:
        inputs = synthetic_inputs(batch_size, image_size, 1, False, generator)

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            model(inputs)

    _reset_peak(device)
    cpu_seconds: List[float] = []
    seconds = _timed(step, iters, warmup, device, cpu_seconds)
    return {
        "images_per_s": batch_size / seconds, "ms_per_iter": 1000 * seconds, "cpu_ms_per_iter": 1000 * cpu_seconds[0],
        "peak_mem_mb": _peak_mb(device),
    }


def bench_compiled(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=None) -> Dict:
    """:func:`bench_inference` of a ``torch.compile``'d model after two untimed calls (the first
    compiles for the input shape, the second may recompile), whose time is ``compile_s``."""
    start = time.perf_counter()
    bench_inference(model, device, batch_size, image_size, dtype, 1, 1, generator, inputs=inputs)
    compile_s = time.perf_counter() - start
    result = bench_inference(model, device, batch_size, image_size, dtype, iters, warmup, generator, inputs=inputs)
    return {**result, "compile_s": compile_s}


class OnnxRuntimeDetector:
    """onnxruntime (CPU execution provider) on ``model`` exported with
    :func:`detrex_lite.export.onnx_export.export_onnx` (fixed canvas = the benchmark's image size,
    dynamic batch), behind the same call as our model. The timed call runs the session on inputs
    normalised and padded beforehand (the graph takes normalised images)."""

    def __init__(self, model, image_size: Sequence[int], path: str, threads: int):
        import onnxruntime as ort

        from detrex_lite.export.onnx_export import export_onnx, prepare_export_inputs

        export_onnx(model, path, tuple(image_size), dynamic_size=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self._prepare = lambda inputs: prepare_export_inputs(model, [x["image"] for x in inputs], tuple(image_size))
        self._cache: Dict[int, Dict] = {}

    def __call__(self, batched_inputs):
        key = id(batched_inputs)
        if key not in self._cache:
            images, sizes = self._prepare(batched_inputs)
            self._cache = {key: {"images": images.numpy(), "image_sizes": sizes.numpy()}}
        return self.session.run(None, self._cache[key])

    def eval(self):
        return self


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s (2 n^3 per product) of an n x n matmul in ``dtype`` on the CPU, best of repeated runs."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds or best == float("inf"):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_gflop(model, image_size: Sequence[int]) -> float:
    """fvcore FLOPs of one eval forward at ``image_size`` in GFLOP (one multiply-add = 1, as
    tools/analyze_model.py and the papers count)."""
    from detrex_lite.export.flops import model_flop_analysis, synthetic_image_inputs

    model.eval()
    with torch.no_grad():
        return model_flop_analysis(model, synthetic_image_inputs(image_size, torch.device("cpu"))).total() / 1e9


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


def bench_train(
    model, optimizer, device, batch_size, image_size, num_classes, dtype, iters, warmup, generator, inputs=None
) -> Dict:
    """Training iterations (forward, backward, optimizer step) as the trainer runs them."""
    model.train()
    if inputs is None:
        inputs = synthetic_inputs(batch_size, image_size, num_classes, True, generator)
    # float16 gradients need loss scaling; bfloat16 does not.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step():
        with _autocast(device, dtype):
            losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    _reset_peak(device)
    seconds = _timed(step, iters, warmup, device)
    return {"iters_per_s": 1 / seconds, "ms_per_iter": 1000 * seconds, "peak_mem_mb": _peak_mb(device)}


# --- Hugging Face transformers' Deformable DETR (--compare-hf) ---------------------------------
def hf_config_from(cfg, num_classes: int):
    """A ``transformers.DeformableDetrConfig`` with the architecture of ``cfg.model``.

    Same d_model, layers, heads, FFN width, dropout, activation, levels, points, queries,
    two-stage / box-refinement / auxiliary-loss flags, matcher costs and loss weights; the backbone
    is HF's own ResNet (``ResNetConfig``: same depth, widths and stem, stride in the 3x3 conv like
    ``stride_in_1x1=False``) with ``use_timm_backbone=False`` and ``use_pretrained_backbone=False``.
    """
    import transformers

    from detrex_lite.modeling.backbone import _BLOCKS_PER_STAGE

    m = cfg.model
    backbone, t = m.backbone, m.transformer
    if backbone.get("res5_dilation", 1) != 1 or backbone.get("stride_in_1x1", False):
        raise ValueError("--compare-hf: HF's ResNet backbone has no DC5 / stride_in_1x1=True variant")
    depth, stem = backbone.depth, backbone.get("stem_out_channels", 64)
    bottleneck = depth >= 50
    out_features = [f"stage{int(name[3:]) - 1}" for name in backbone.out_features]  # res3 -> stage2
    backbone_config = transformers.ResNetConfig(
        embedding_size=stem,
        hidden_sizes=[stem * (4 if bottleneck else 1) * 2**i for i in range(4)],
        depths=list(_BLOCKS_PER_STAGE[depth]),
        layer_type="bottleneck" if bottleneck else "basic",
        downsample_in_bottleneck=False,
        out_features=out_features,
    )
    criterion = m.get("criterion", {})
    matcher = criterion.get("matcher", {})
    weights = criterion.get("weight_dict", {})
    return transformers.DeformableDetrConfig(
        backbone_config=backbone_config,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=t.d_model,
        encoder_layers=t.num_encoder_layers,
        decoder_layers=t.num_decoder_layers,
        encoder_attention_heads=t.nhead,
        decoder_attention_heads=t.nhead,
        encoder_ffn_dim=t.dim_feedforward,
        decoder_ffn_dim=t.dim_feedforward,
        dropout=t.dropout,
        activation_function=t.get("activation", "relu"),
        num_feature_levels=t.num_feature_levels,
        encoder_n_points=t.enc_n_points,
        decoder_n_points=t.dec_n_points,
        num_queries=m.num_queries,
        two_stage=bool(m.as_two_stage),
        two_stage_num_proposals=m.num_queries,
        with_box_refine=bool(m.with_box_refine),
        auxiliary_loss=bool(m.aux_loss),
        num_labels=num_classes,
        # HF types these as int (its strict config refuses 2.0); they do not change the speed.
        class_cost=_int_if_whole(matcher.get("cost_class", 2)),
        bbox_cost=_int_if_whole(matcher.get("cost_bbox", 5)),
        giou_cost=_int_if_whole(matcher.get("cost_giou", 2)),
        bbox_loss_coefficient=_int_if_whole(weights.get("loss_bbox", 5)),
        giou_loss_coefficient=_int_if_whole(weights.get("loss_giou", 2)),
        focal_alpha=float(criterion.get("alpha", 0.25)),
    )


def _int_if_whole(x):
    return int(x) if float(x).is_integer() else float(x)


def hf_attention_path() -> str:
    """Which multi-scale deformable attention HF runs: the hub kernel needs the `kernels` package
    (and a download); without it transformers uses its grid_sample implementation."""
    import importlib.util

    if importlib.util.find_spec("kernels") is not None and os.environ.get("USE_HUB_KERNELS", "YES").upper() in (
        "1", "ON", "YES", "TRUE"
    ):
        return "kernels hub (if it could be fetched)"
    return "PyTorch grid_sample (the `kernels` package is not installed)"


class HFDetector(torch.nn.Module):
    """``DeformableDetrForObjectDetection`` behind our model's input convention, so that both
    models take the same detectron2-style batches: uint8 RGB images moved to the device and
    normalised inside the timed call (as our model does), targets as normalised cxcywh.
    Training returns HF's own loss; inference returns HF's raw outputs (no post-processing,
    which our timing includes)."""

    def __init__(self, hf_model, pixel_mean, pixel_std):
        super().__init__()
        self.hf = hf_model
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, batched_inputs):
        device = self.pixel_mean.device
        images = torch.stack([x["image"] for x in batched_inputs]).to(device, non_blocking=True)
        pixel_values = (images.float() - self.pixel_mean) / self.pixel_std
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long, device=device)
        if not self.training:
            return self.hf(pixel_values=pixel_values, pixel_mask=pixel_mask)
        labels = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            boxes = x["instances"].gt_boxes.tensor / torch.tensor([w, h, w, h], dtype=torch.float32)
            cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)
            labels.append({"class_labels": x["instances"].gt_classes.to(device), "boxes": cxcywh.to(device)})
        return {"loss": self.hf(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss}


def build_hf_model(cfg, num_classes: int, device: torch.device) -> HFDetector:
    import transformers

    hf_model = transformers.DeformableDetrForObjectDetection(hf_config_from(cfg, num_classes))
    return HFDetector(hf_model, list(cfg.model.pixel_mean), list(cfg.model.pixel_std)).to(device)


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


def build_optimizer(cfg, model):
    """The config's optimizer (param groups and all); AdamW(lr=1e-4) for a model-only config."""
    if "optimizer" in cfg:
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)
    logger.warning("Config has no optimizer; using AdamW(lr=1e-4, weight_decay=1e-4)")
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)


def environment(device: torch.device) -> Dict:
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


def _git_revision(tree: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def time_baseline(tree: str, args, inputs: List[Dict]) -> Dict:
    """Times ``inputs`` through the model as the checkout ``tree`` builds it (same config path,
    overrides, seed, threads, iterations and allocator setting), in a subprocess running
    tools/time_checkout.py with ``tree`` first on its path."""
    with tempfile.TemporaryDirectory(prefix="detrex_lite_baseline_") as tmp:
        path = os.path.join(tmp, "inputs.pt")
        torch.save(inputs, path)
        command = [
            sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "time_checkout.py"),
            "--tree", tree, "--config-file", args.config_file, "--inputs", path, "--iters", str(args.iters),
            "--warmup", str(args.warmup), "--num-threads", str(torch.get_num_threads()), "--seed", str(args.seed),
        ]
        command += ["--tune-allocator"] if args.tune_allocator else []
        command += ["--opts", *args.opts] if args.opts else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(f"time_checkout.py on {tree} failed: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if os.path.realpath(result["imported_from"]) != os.path.realpath(os.path.join(tree, "detrex_lite")):
        raise RuntimeError(f"--baseline-tree: the subprocess imported detrex_lite from {result['imported_from']}, not {tree}")
    return {k: result[k] for k in ("images_per_s", "ms_per_iter", "cpu_ms_per_iter", "peak_mem_mb")}


def run(args) -> Dict:
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

    # bf16 autocast where the CPU has no bf16 instructions runs emulated products (~0.3-0.6
    # GFLOP/s on an AVX2 machine): a single 800x1333 image would take the better part of an hour.
    skip_emulated_bf16 = None
    if device.type == "cpu" and not args.force_bf16:
        from detrex_lite.inference import bf16_hardware_support, cpu_name

        if bf16_hardware_support() is None:
            skip_emulated_bf16 = (
                f"skipped: no native bf16 on this CPU ({cpu_name()}: no AMX, AVX-512 BF16 or Arm BF16); "
                "--force-bf16 runs it emulated"
            )
    baseline = None
    if args.baseline_tree:
        baseline = {"tree": os.path.abspath(args.baseline_tree), "revision": _git_revision(args.baseline_tree)}
        extra["baseline"] = baseline

    def measure_in_rounds(plan: List, rounds: int) -> None:
        # Each round times every row once, in order; a row reports its median round (by wall
        # time), so slow drift and bursts of load on a shared machine hit all rows alike. One
        # failing measurement (e.g. out of memory at batch 4) is reported in its row, not fatal.
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
                measure_in_rounds(plan, args.rounds)
        if "train" in args.modes:
            inputs = synthetic_inputs(args.train_batch_size, args.image_size, num_classes, True, generator)
            for name, model in models.items():
                optimizer = build_optimizer(cfg, model)  # the config's optimizer and lr groups, for both
                row = {"model": name, "mode": "train", "precision": label, "batch_size": args.train_batch_size}
                bench_args = (model, optimizer, device, args.train_batch_size, args.image_size, num_classes, dtype,
                              args.iters, args.warmup, generator, inputs)
                measure_in_rounds([(row, bench_train, bench_args)], 1)
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
        import transformers

        report["hf_transformers"] = {
            "version": transformers.__version__,
            "config": {k: v for k, v in models["hf_transformers"].hf.config.to_diff_dict().items()
                       if k not in ("id2label", "label2id")},
            "attention": hf_attention_path(),
            "parameters": sum(p.numel() for p in models["hf_transformers"].parameters()),
            "detrex_lite_parameters": sum(p.numel() for p in models["detrex_lite"].parameters()),
        }
        report["comparison"] = compare(rows)
    return report


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


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args = get_parser().parse_args(argv)
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


if __name__ == "__main__":
    main()
