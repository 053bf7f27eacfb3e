"""The command lines of ``tools/export_onnx.py`` and ``tools/analyze_model.py`` (stdlib only, so
that ``--help`` answers before torch loads). Config overrides are bare ``key=value`` words after
the flags (:mod:`detrex_lite.cli`; ``--opts`` is still accepted, with a deprecation line)."""
import argparse
import os
import re
from typing import Optional, Sequence

from detrex_lite.cli.overrides import add_override_arguments, add_trust_config_argument, parse_args_with_overrides

__all__ = ["export_onnx_parser", "parse_export_onnx_args", "analyze_model_parser", "parse_analyze_model_args"]

EXPORT_ONNX_DESCRIPTION = r"""Exports a trained DETR-family detector to ONNX and checks it against PyTorch with onnxruntime.

    python tools/export_onnx.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --checkpoint output/model_final.pth --output output/model.onnx --check-images a.jpg b.jpg

    python tools/export_onnx.py --run output/run --output output/run/model.onnx   # a training folder

Weights are loaded strictly (a checkpoint of another class count or architecture is refused
with one line naming the config option), the EMA weights when the config asks for them.
The graph takes a normalised, zero-padded image batch plus each image's unpadded size, and
returns top-k ``scores``/``labels``/``boxes`` (``--format detections``) or the raw
``pred_logits``/``pred_boxes`` (``--format raw``); batch, height and width are dynamic
(``--fixed-size``: height and width fixed to ``--canvas``). See docs/tools.md for the exact
contract. After export, the same inputs (``--check-images``, resized as the test loader does, or
random images, padded to the canvas; with dynamic sizes also a second batch of another size) are
run through onnxruntime and PyTorch; the maximum differences are printed (and written with
``--json``), and the exit status is 1 when they exceed ``--atol``. Config overrides (key=value)
come after the flags (after ``--`` when the last flag is ``--check-images``). The file's metadata
records the test resize, the normalisation and the class names, which tools/onnx_inference.py
reads to run the graph without torch.
"""

ANALYZE_MODEL_DESCRIPTION = r"""Parameter count, FLOPs at a given input size and a per-module breakdown of any config's model.

    python tools/analyze_model.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --tasks parameter flop --image-size 800 1333 --max-depth 2

FLOPs are counted by fvcore on one traced forward pass in eval mode (one fused multiply-add = one
FLOP, as in the DETR and Deformable DETR papers), including the multi-scale deformable
attention op (see ``detrex_lite.export.flops``). The input is one random image of
``--image-size`` given to the model as is (no resize). Weights are not needed and not loaded.
"""

# A word of --check-images that is a config override written without the "--" before it.
_OVERRIDE = re.compile(r"\+?[A-Za-z_][\w.]*=")


def export_onnx_parser() -> argparse.ArgumentParser:
    """The parser of ``tools/export_onnx.py``."""
    parser = argparse.ArgumentParser(description=EXPORT_ONNX_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", help="LazyConfig .py (or saved .yaml) file")
    source.add_argument(
        "--run", metavar="DIR", help="a training output folder: its config.yaml and model_best.pth (else its newest checkpoint)"
    )
    parser.add_argument(
        "--checkpoint", default=None,
        help="weights (default: train.init_checkpoint; with --run its model_best.pth or newest checkpoint, or this file in DIR)",
    )
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--format", default="detections", choices=["detections", "raw"], help="graph outputs")
    parser.add_argument(
        "--canvas", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="input size traced and checked; the fixed input size with --fixed-size "
        "(default: max_size x max_size of the test ResizeShortestEdge)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    parser.add_argument(
        "--fixed-size", action="store_true", help="fix the input height and width to --canvas (only the batch is dynamic)"
    )
    parser.add_argument("--check-images", nargs="*", default=[], help="images for the parity check")
    parser.add_argument("--check-batch-size", type=int, default=2, help="random images when none are given")
    parser.add_argument(
        "--atol", type=float, default=1e-3,
        help="largest absolute difference from PyTorch the check accepts (default: 1e-3)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--json", default=None, help="write the parity report here")
    add_trust_config_argument(parser)
    add_override_arguments(parser, help="config overrides after the flags, e.g. train.init_checkpoint=model.pth")
    return parser


def parse_export_onnx_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``tools/export_onnx.py``'s arguments, overrides collected in ``args.opts``. An override
    swallowed by ``--check-images`` (no ``--`` before it) is one line on stderr, exit 2."""
    parser = export_onnx_parser()
    args = parse_args_with_overrides(parser, argv)
    for word in args.check_images:
        if _OVERRIDE.match(word) and not os.path.exists(word):
            parser.exit(
                2, f"{parser.prog}: error: --check-images: {word} is no image but looks like a config override; "
                f"write '--' before the overrides: --check-images ... -- {word}\n",
            )
    return args


def analyze_model_parser() -> argparse.ArgumentParser:
    """The parser of ``tools/analyze_model.py``."""
    parser = argparse.ArgumentParser(description=ANALYZE_MODEL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig .py (or a saved config.yaml) whose model is analysed")
    parser.add_argument(
        "--tasks", nargs="+", default=["parameter", "flop"], choices=["parameter", "flop", "structure"],
        help="parameter: parameter counts, flop: FLOPs (fvcore), both per module down to --max-depth; "
        "structure: also print the module tree "
        "(default: parameter flop)",
    )
    parser.add_argument(
        "--image-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
        help="height and width of the random input image in pixels (default: 800 1333)",
    )
    parser.add_argument("--max-depth", type=int, default=2, help="depth of the per-module breakdown")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    add_override_arguments(parser, help="config overrides after the flags, e.g. model.num_queries=100")
    return parser


def parse_analyze_model_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``tools/analyze_model.py``'s arguments, overrides collected in ``args.opts``."""
    return parse_args_with_overrides(analyze_model_parser(), argv)
