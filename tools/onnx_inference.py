#!/usr/bin/env python
r"""Runs an exported ONNX detector on images with onnxruntime, numpy and Pillow only (no torch, no
detectron2), with the same preprocessing as the PyTorch Predictor.

    python tools/onnx_inference.py output/run/model.onnx photo.jpg street.png --threshold 0.3 \
        --json output/run/onnx_detections.json

The ONNX file is one written by tools/export_onnx.py (--format detections). What the graph needs
is read from its metadata: the test resize (short edge, max size), the normalisation and the
class names. Each image is resized as the config's test loader does, normalised, run alone (no
padding), and its boxes come back in pixels of the original image. Prints each image's detections
with score >= --threshold, writes them with --json, and ends with the number of detections.
The steps, and the same in a few lines of Python, are in docs/inference.md.
"""
import argparse
import sys
from typing import Optional, Sequence


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx_inference.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("onnx", help="the .onnx file written by tools/export_onnx.py")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--threshold", type=float, default=None,
                        help="keep detections with at least this score (default: the display threshold the export "
                        "recorded from the checkpoint's last evaluation, else 0.3)")
    parser.add_argument(
        "--json", default=None, metavar="FILE",
        help="also write the detections here (per image: file_name, height, width, detections with "
        "class_id, class_name, score, box_xyxy in original-image pixels)",
    )
    parser.add_argument(
        "--short-edge", type=int, default=None, metavar="PX",
        help="test resize: the short side in pixels (default: recorded in the ONNX file)",
    )
    parser.add_argument(
        "--max-size", type=int, default=None, metavar="PX",
        help="test resize: the longest side allowed in pixels (default: recorded in the ONNX file)",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="onnxruntime threads (default: its own)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from detrex_lite.cli.entry import exit_status
    from detrex_lite.errors import OutputDirError
    from detrex_lite.export.onnx_predictor import OnnxInferenceError, onnx_inference_main

    return exit_status("onnx_inference", (OnnxInferenceError, OutputDirError), onnx_inference_main, args)


if __name__ == "__main__":
    sys.exit(main())
