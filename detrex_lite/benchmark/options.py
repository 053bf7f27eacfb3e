"""The command lines of ``tools/benchmark.py`` and ``tools/time_checkout.py`` (stdlib only, so
that ``--help`` answers before torch loads). Config overrides are bare ``key=value`` words after
the flags (:mod:`detrex_lite.cli`; ``--opts`` is still accepted, with a deprecation line)."""
import argparse
from typing import Optional, Sequence

from detrex_lite.cli.overrides import add_override_arguments, parse_args_with_overrides

__all__ = ["benchmark_parser", "parse_benchmark_args", "time_checkout_parser", "parse_time_checkout_args"]

BENCHMARK_DESCRIPTION = r"""Whole-model speed and memory: inference images/s (batch 1 and 4, as in the Deformable DETR
paper) and training iterations/s, in fp32 and AMP, on CPU or GPU.

    python tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --device cuda --json output/benchmark.json

Inputs are synthetic (random pixels at ``--image-size``, a few random boxes per image for
training), so the numbers measure the model, not the data loader. Timings exclude ``--warmup``
iterations and synchronise CUDA before reading the clock. Peak memory is
``torch.cuda.max_memory_allocated`` for each measurement on GPU; on CPU it is the process's peak
resident set size so far (it never goes down, so read it as an upper bound).
Weights are not loaded unless ``--checkpoint`` is given (speed does not depend on them; the
shared strict loader then also checks that they fit the config); config overrides
(``key=value`` after the flags) change the model.

``--compare-hf`` also builds Hugging Face transformers' ``DeformableDetrForObjectDetection`` with
the config's architecture (random weights, torchvision-style ResNet from ``ResNetConfig``) and
times it in the same process on the same inputs, batch sizes, precisions and iterations, one
measurement of ours then the same one of HF; the table and JSON get both rows and the ratio.

CPU inference (docs/inference.md): ``--fast`` adds our fast mode (``optimize_for_inference``),
``--compile`` its ``torch.compile``'d version (compile time reported apart), ``--onnx``
onnxruntime on our exported model, ``--peaks`` the machine's own fp32/bf16 matmul peaks and each
row's fraction of its dtype's peak, ``--baseline-tree DIR`` the model as an older checkout builds
it (in a subprocess, same inputs), for "x times the previous build" in the same run. bf16 rows
are skipped on CPUs without native bf16 (emulated, ~100x slower than fp32) unless
``--force-bf16``.
"""

TIME_CHECKOUT_DESCRIPTION = r"""Times eval forwards of a config's model as built by *another* detrex_lite checkout, so that a
change can be measured against an older build side by side (``tools/benchmark.py
--baseline-tree DIR`` does the same once per batch size, in a subprocess, on the inputs it
times its own rows on).

    python tools/time_checkout.py --tree /path/to/old/checkout --config-file CONFIG \
        --inputs inputs.pt --iters 3 --warmup 1 --num-threads 2 --tune-allocator

The checkout must have its compiled operator built (``detrex_lite/_C*.so``). Only interfaces
that every detrex_lite version has are used: ``LazyConfig.load``, ``instantiate(cfg.model)``,
``model.eval()`` and ``model(list[dict])``. Random weights (``--seed``); speed does not depend on
them. Prints one JSON object: ms per iteration (wall and process CPU time), images per second,
the peak RSS, the number of threads and the folder its ``detrex_lite`` was imported from (to
show it was that checkout's and not this one's).
"""


def benchmark_parser() -> argparse.ArgumentParser:
    """The parser of ``tools/benchmark.py``."""
    parser = argparse.ArgumentParser(description=BENCHMARK_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig .py (or a saved config.yaml) whose model is timed")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
        help="height and width of the synthetic images in pixels (default: 800 1333)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="inference batch sizes")
    parser.add_argument("--train-batch-size", type=int, default=2, help="images per training iteration (default: 2)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="inference: time every row this many times, interleaved (row A, row B, ..., then again), and "
        "report each row's median round; for ratios on a shared machine whose load drifts",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument(
        "--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"],
        help="what to time: inference (no-grad eval forwards) and/or train (forward, backward, optimizer step)",
    )
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights, images and boxes (default: 0)")
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
        "(as tools/time_checkout.py); rows 'detrex_lite@<revision>'",
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
    add_override_arguments(parser, help="config overrides after the flags, e.g. model.num_queries=100")
    return parser


def time_checkout_parser() -> argparse.ArgumentParser:
    """The parser of ``tools/time_checkout.py``."""
    parser = argparse.ArgumentParser(description=TIME_CHECKOUT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True, help="the detrex_lite checkout whose model is timed")
    parser.add_argument("--config-file", required=True, help="relative to --tree")
    parser.add_argument("--inputs", required=True, help="torch.save'd list of detectron2 input dicts")
    parser.add_argument("--iters", type=int, default=3, help="timed forwards (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (default: 1)")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--tune-allocator", action="store_true",
        help="detrex_lite.inference.tune_cpu_allocator() first (glibc keeps freed memory)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    add_override_arguments(parser, help="config overrides after the flags, applied in --tree's config")
    return parser


def parse_benchmark_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``tools/benchmark.py``'s arguments, overrides collected in ``args.opts``."""
    return parse_args_with_overrides(benchmark_parser(), argv)


def parse_time_checkout_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``tools/time_checkout.py``'s arguments, overrides collected in ``args.opts``."""
    return parse_args_with_overrides(time_checkout_parser(), argv)
