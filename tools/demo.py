#!/usr/bin/env python
r"""Runs a trained detector on images, folders, globs or videos and draws its detections.

    python tools/demo.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --input "photos/*.jpg" clip.mp4 --output demo_out --confidence-threshold 0.5 \
        --json --opts train.init_checkpoint=output/model_final.pth

    python tools/demo.py --run output/run --input photos/ --output demo_out   # a training output folder

Weights come from ``train.init_checkpoint`` (override it with ``--opts``), or with ``--run DIR``
from DIR's newest complete checkpoint (its config.yaml; class names from the checkpoint, so no
dataset needs to be registered). One drawn image is
written per input image (same file name) and one drawn .mp4 per input video; ``--json`` also
writes ``detections.json`` in COCO results format (plus ``file_name`` and, for videos, ``frame``)
holding the detections drawn, i.e. those scoring at least ``--confidence-threshold`` (use 0 to
keep all, e.g. for evaluation). An input that cannot be read is reported by name and skipped;
the exit status is 1 when any input was skipped.
"""
from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # noqa: E402
import detrex_lite  # noqa: E402,F401  (first: imports detectron2 without its torch.jit warnings)

from detectron2.structures import Instances  # noqa: E402

from detrex_lite.checkpoint import CheckpointError  # noqa: E402
from detrex_lite.predictor import Predictor  # noqa: E402
from detrex_lite.utils import json_io  # noqa: E402
from detrex_lite.utils.draw import draw_detections, scaled_size  # noqa: E402
from detrex_lite.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("detrex_lite.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and "(default: X)" after every option that has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__, formatter_class=_HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", metavar="FILE", help="LazyConfig .py file (or a run's config.yaml)")
    source.add_argument(
        "--run", metavar="DIR", help="a training output folder: its config.yaml and newest complete checkpoint"
    )
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH",
        help="image files, folders (their images, sorted), glob patterns (quote them) or videos",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the drawn images/videos")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, metavar="SCORE", help="minimum score drawn (and written)"
    )
    parser.add_argument("--json", action="store_true", help="also write OUTPUT/detections.json (COCO results format)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--scale", type=float, default=1.0, metavar="FACTOR",
        help="draw at this multiple of the input size (e.g. 4 for 64 px images: readable labels)",
    )
    parser.add_argument(
        "--line-width", type=int, default=None, metavar="PX", help="box lines in output pixels (default: from the size)"
    )
    parser.add_argument(
        "--font-scale", type=float, default=None, metavar="SCALE", help="label text size (default: from the size)"
    )
    parser.add_argument(
        "--dataset", default=None, metavar="NAME",
        help="also draw the ground truth of this registered dataset (dashed green on black, labels below the "
        "boxes) on the inputs that are its images (matched by file name)",
    )
    parser.add_argument(
        "--precision", default=None, choices=["fp32", "bf16"],
        help="CPU inference mode (detrex_lite.inference): fp32 = folded BatchNorm + channels_last; bf16 = "
        "bfloat16 weights and activations where the CPU has native bf16 (AMX / AVX-512 BF16), else fp32 "
        "with a warning (default: the model as built)",
    )
    parser.add_argument("--force-bf16", action="store_true", help="with --precision bf16: run bf16 even without native support")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, key=value")
    return parser


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Folders -> their image files (sorted), globs -> matches (sorted), anything else as given."""
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name) for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            )
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        else:
            found = [pattern]  # a missing file is reported (and skipped) when it is read
        if not found:
            logger.warning("No input matches %r", pattern)
        paths.extend(found)
    return paths


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def output_name(path: str, used: Dict[str, int]) -> str:
    """A file name for ``path`` in the output folder, unique among the inputs of this run."""
    base = os.path.basename(path)
    count = used.get(base, 0)
    used[base] = count + 1
    if count == 0:
        return base
    stem, ext = os.path.splitext(base)
    return f"{stem}_{count}{ext}"


class Drawer:
    """Draws detections (and the ground truth of ``--dataset``) as the command line asks."""

    def __init__(self, metadata, scale: float = 1.0, line_width: Optional[int] = None,
                 font_scale: Optional[float] = None, ground_truth: Optional[Dict[str, dict]] = None):
        self.class_names = list(getattr(metadata, "thing_classes", []) or [])
        self.scale, self.line_width, self.font_scale = scale, line_width, font_scale
        self.ground_truth = ground_truth

    def name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class {class_id}"

    def __call__(self, image_rgb: np.ndarray, instances: Instances, path: Optional[str] = None) -> np.ndarray:
        """An RGB uint8 image, ``--scale`` times the input size."""
        order = instances.scores.argsort()  # best last: its label is drawn on top
        boxes = instances.pred_boxes.tensor[order].numpy()
        classes = instances.pred_classes[order].tolist()
        labels = [f"{self.name(c)} {s:.0%}" for c, s in zip(classes, instances.scores[order].tolist())]
        gt = self.ground_truth.get(ground_truth_key(path)) if self.ground_truth is not None and path else None
        return draw_detections(
            image_rgb, boxes, labels, classes, scale=self.scale, line_width=self.line_width,
            font_scale=self.font_scale,
            gt_boxes=None if gt is None else gt["boxes"],
            gt_labels=None if gt is None else [self.name(c) for c in gt["classes"]],
        )


def ground_truth_key(path: str) -> str:
    return os.path.basename(path)


def load_ground_truth(dataset: str) -> Dict[str, dict]:
    """{image file name: {"boxes": (G, 4) absolute xyxy, "classes": [contiguous ids]}} of a
    registered dataset (crowd boxes left out)."""
    from detectron2.data import DatasetCatalog

    from detrex_lite.data import non_crowd_boxes  # (importing it registers the demo datasets)

    if dataset not in DatasetCatalog.list():
        raise KeyError(f"--dataset {dataset}: not a registered dataset (e.g. detrex_demo_val, coco_2017_val)")
    index: Dict[str, dict] = {}
    for record in DatasetCatalog.get(dataset):
        boxes, classes = non_crowd_boxes(record.get("annotations", []))
        index[ground_truth_key(record["file_name"])] = {"boxes": boxes, "classes": classes}
    return index


def keep_confident(instances: Instances, threshold: float, name: str) -> Instances:
    """The instances scoring at least ``threshold``; says so when none does."""
    kept = instances[instances.scores >= threshold]
    if len(kept) == 0:
        best = f"highest score {instances.scores.max().item():.3f}" if len(instances) else "the model returned none"
        logger.info(
            "%s: no detection scores >= %g (%s); lower --confidence-threshold to draw more", name, threshold, best
        )
    return kept


def coco_results(
    instances: Instances, image_id: int, file_name: str, metadata, frame: Optional[int] = None
) -> List[dict]:
    """COCO results entries (bbox as absolute xywh) for one image; category ids are the dataset's."""
    contiguous_to_dataset = {
        v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).items()
    }
    boxes = instances.pred_boxes.tensor.tolist()
    results = []
    for (x0, y0, x1, y1), score, cls in zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist()):
        entry = {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": contiguous_to_dataset.get(cls, cls),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": score,
        }
        if frame is not None:
            entry["frame"] = frame
        results.append(entry)
    return results


def read_frames(path: str) -> Tuple[Iterator[np.ndarray], float, int, Tuple[int, int]]:
    """BGR frames of a video, its fps, frame count (0 if unknown) and (width, height)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise OSError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def frames():
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    return frames(), fps, count, size


def run_video(
    predictor: Predictor, path: str, out_path: str, threshold: float, first_id: int, drawer: "Drawer"
) -> Tuple[List[dict], int]:
    """Draws every frame into ``out_path``; returns the COCO results and the frame count."""
    frames, fps, count, (width, height) = read_frames(path)
    out_h, out_w = scaled_size(height, width, drawer.scale)
    size = (out_w, out_h)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OSError(f"cannot write video {out_path}")
    results: List[dict] = []
    num_frames = 0
    try:
        bar = tqdm.tqdm(frames, total=count or None, desc=os.path.basename(path), unit="frame", leave=False)
        for index, frame_bgr in enumerate(bar):
            num_frames += 1
            frame_rgb = frame_bgr[:, :, ::-1]
            instances = predictor.predict_rgb([frame_rgb])[0]
            instances = instances[instances.scores >= threshold]
            drawn = drawer(frame_rgb, instances)
            writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
            results.extend(coco_results(instances, first_id + index, path, predictor.metadata, frame=index))
    finally:
        writer.release()
    if num_frames == 0:
        os.remove(out_path)
        raise OSError(f"no frame could be read from video {path}")
    return results, num_frames


def _run_inputs(args, predictor: Predictor, drawer: Drawer, progress) -> Tuple[List[dict], List[str]]:
    """Predicts and draws every input; returns the COCO results and the inputs skipped."""
    used_names: Dict[str, int] = {}
    results: List[dict] = []
    skipped: List[str] = []
    next_id = 0
    hinted_small = False
    for path in progress:
        name = output_name(path, used_names)
        try:
            if is_video(path):
                out_path = os.path.join(args.output, os.path.splitext(name)[0] + ".mp4")
                video_results, num_frames = run_video(
                    predictor, path, out_path, args.confidence_threshold, next_id, drawer
                )
                results.extend(video_results)
                next_id += num_frames
                continue
            image_rgb = predictor.read(path)
        except Exception as err:  # unreadable or corrupt input: report it by name, keep going
            logger.error("Skipping %s: %s", path, err)
            skipped.append(path)
            continue
        instances = predictor.predict_rgb([image_rgb])[0]
        instances = keep_confident(instances, args.confidence_threshold, path)
        if args.scale == 1.0 and max(image_rgb.shape[:2]) < 320 and not hinted_small:
            hinted_small = True
            logger.info(
                "%s is small (%dx%d): --scale %d draws it larger with readable labels",
                path, image_rgb.shape[1], image_rgb.shape[0], math.ceil(640 / max(image_rgb.shape[:2])),
            )
        if drawer.ground_truth is not None and ground_truth_key(path) not in drawer.ground_truth:
            logger.info("%s: not an image of --dataset %s, no ground truth drawn", path, args.dataset)
        drawn = drawer(image_rgb, instances, path)
        out_path = os.path.join(args.output, name)
        if not cv2.imwrite(out_path, np.ascontiguousarray(drawn[:, :, ::-1])):
            logger.error("Could not write %s (unsupported extension?)", out_path)
            skipped.append(path)
            continue
        results.extend(coco_results(instances, next_id, path, predictor.metadata))
        next_id += 1
    return results, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logger()
    if args.scale <= 0:
        parser.error(f"--scale {args.scale}: expected > 0")
    ground_truth = None
    if args.dataset:
        try:
            ground_truth = load_ground_truth(args.dataset)
        except KeyError as err:
            parser.error(str(err.args[0]))
    fast = dict(precision=args.precision, force_bf16=args.force_bf16)
    try:
        if args.run:
            predictor = Predictor.from_run(args.run, device=args.device, opts=args.opts, **fast)
        else:
            predictor = Predictor(args.config_file, device=args.device, opts=args.opts, **fast)
    except (CheckpointError, FileNotFoundError) as e:  # unusable weights or run folder: one line
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    drawer = Drawer(predictor.metadata, args.scale, args.line_width, args.font_scale, ground_truth)
    os.makedirs(args.output, exist_ok=True)

    paths = expand_inputs(args.input)
    progress = tqdm.tqdm(paths, desc="demo", unit="input")
    # Log lines go through tqdm.write while the bar runs, so that they do not split it.
    with logging_redirect_tqdm(loggers=[logging.getLogger("detrex_lite")]):
        results, skipped = _run_inputs(args, predictor, drawer, progress)

    if args.json:
        json_io.dump(results, os.path.join(args.output, "detections.json"), indent=None)
    logger.info(
        "Processed %d of %d inputs into %s%s", len(paths) - len(skipped), len(paths), args.output,
        f"; skipped: {', '.join(skipped)}" if skipped else "",
    )
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
