"""``tools/demo.py``: a trained detector run on images, folders, globs or videos, its detections
drawn (and written as COCO results)."""
from __future__ import annotations

import glob
import logging
import math
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detrex_lite.analysis.threshold import choose_threshold, nothing_passes_message
from detrex_lite.errors import CheckpointError, ConfigError
from detrex_lite.visualization import dedupe, draw_detections, scaled_size

logger = logging.getLogger("detrex_lite.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
_OVERRIDE = re.compile(r"\+?[A-Za-z_][\w.]*=")


def split_overrides(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(inputs, overrides): ``--input a.jpg key=value`` hands the bare ``key=value`` words after
    the inputs to argparse's ``--input`` list; those that are not existing paths are overrides."""
    paths, overrides = [], []
    for item in inputs:
        (overrides if _OVERRIDE.match(item) and not os.path.exists(item) else paths).append(item)
    return paths, overrides


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


def ground_truth_key(path: str) -> str:
    return os.path.basename(path)


def load_ground_truth(dataset: str) -> Dict[str, dict]:
    """{image file name: {"image_id", "boxes": (G, 4) absolute xyxy, "classes": [contiguous ids]}}
    of a registered dataset (crowd boxes left out). ConfigError if it is not registered."""
    from detectron2.data import DatasetCatalog

    from detrex_lite.data import non_crowd_boxes  # (importing it registers the demo datasets)

    if dataset not in DatasetCatalog.list():
        raise ConfigError(f"--dataset {dataset}: not a registered dataset (e.g. detrex_demo_val, coco_2017_val)")
    index: Dict[str, dict] = {}
    for record in DatasetCatalog.get(dataset):
        boxes, classes = non_crowd_boxes(record.get("annotations", []))
        index[ground_truth_key(record["file_name"])] = {
            "image_id": record.get("image_id"), "boxes": boxes, "classes": classes}
    return index


class Drawer:
    """Draws detections (and the ground truth of ``--dataset``) as the command line asks."""

    def __init__(self, metadata, scale: float = 1.0, line_width: Optional[int] = None,
                 font_scale: Optional[float] = None, ground_truth: Optional[Dict[str, dict]] = None,
                 dedupe_iou: Optional[float] = None):
        self.class_names = list(getattr(metadata, "thing_classes", []) or [])
        self.scale, self.line_width, self.font_scale = scale, line_width, font_scale
        self.ground_truth, self.dedupe_iou = ground_truth, dedupe_iou

    def name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else f"class {class_id}"

    def __call__(self, image_rgb: np.ndarray, instances, path: Optional[str] = None) -> np.ndarray:
        """An RGB uint8 image, ``scale`` times the input size; predictions by decreasing score
        (the best label is placed first), after display-only duplicate suppression if asked."""
        boxes = instances.pred_boxes.tensor.numpy()
        scores = instances.scores.numpy()
        order = (dedupe(boxes, scores, self.dedupe_iou) if self.dedupe_iou is not None
                 else np.argsort(-scores, kind="stable"))
        classes = instances.pred_classes.numpy()[order].tolist()
        labels = [f"{self.name(c)} {s:.0%}" for c, s in zip(classes, scores[order].tolist())]
        gt = self.ground_truth.get(ground_truth_key(path)) if self.ground_truth is not None and path else None
        return draw_detections(
            image_rgb, boxes[order], labels, classes, scale=self.scale, line_width=self.line_width,
            font_scale=self.font_scale,
            gt_boxes=None if gt is None else gt["boxes"],
            gt_labels=None if gt is None else [self.name(c) for c in gt["classes"]],
            gt_class_ids=None if gt is None else gt["classes"],
        )


def keep_confident(instances, threshold: float, name: str):
    """The instances scoring at least ``threshold``; says so, with the highest score, when none does."""
    kept = instances[instances.scores >= threshold]
    if len(kept) == 0:
        best = instances.scores.max().item() if len(instances) else None
        logger.info("%s: %s", name, nothing_passes_message(threshold, best))
    return kept


def coco_results(instances, image_id: int, file_name: str, metadata, frame: Optional[int] = None) -> List[dict]:
    """COCO results entries (bbox as absolute xywh) for one image; category ids are the dataset's."""
    contiguous_to_dataset = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).items()}
    results = []
    for (x0, y0, x1, y1), score, cls in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(),
                                            instances.pred_classes.tolist()):
        entry = {"image_id": image_id, "file_name": file_name, "category_id": contiguous_to_dataset.get(cls, cls),
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
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


def run_video(predictor, path: str, out_path: str, threshold: float, first_id: int,
              drawer: Drawer) -> Tuple[List[dict], int]:
    """Draws every frame into ``out_path``; returns the COCO results and the frame count."""
    import tqdm

    frames, fps, count, (width, height) = read_frames(path)
    out_h, out_w = scaled_size(height, width, drawer.scale)
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (out_w, out_h))
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
            writer.write(np.ascontiguousarray(drawer(frame_rgb, instances)[:, :, ::-1]))
            results.extend(coco_results(instances, first_id + index, path, predictor.metadata, frame=index))
    finally:
        writer.release()
    if num_frames == 0:
        os.remove(out_path)
        raise OSError(f"no frame could be read from video {path}")
    return results, num_frames


def run_inputs(predictor, drawer: Drawer, paths, output: str, threshold: float,
               dataset: Optional[str] = None) -> Tuple[List[dict], List[str]]:
    """Predicts and draws every input into ``output``; returns the COCO results and the inputs
    skipped. An image of ``drawer.ground_truth`` (``--dataset``) keeps its dataset image_id in
    the results; the other inputs are numbered from 0, or after the dataset's largest id."""
    gt = drawer.ground_truth or {}
    used_names: Dict[str, int] = {}
    results: List[dict] = []
    skipped: List[str] = []
    next_id = 1 + max((e["image_id"] for e in gt.values() if isinstance(e.get("image_id"), int)), default=-1)
    hinted_small = False
    for path in paths:
        name = output_name(path, used_names)
        try:
            if is_video(path):
                out_path = os.path.join(output, os.path.splitext(name)[0] + ".mp4")
                video_results, num_frames = run_video(predictor, path, out_path, threshold, next_id, drawer)
                results.extend(video_results)
                next_id += num_frames
                continue
            image_rgb = predictor.read(path)
        except Exception as err:  # unreadable or corrupt input: report it by name, keep going
            logger.error("Skipping %s: %s", path, err)
            skipped.append(path)
            continue
        instances = keep_confident(predictor.predict_rgb([image_rgb])[0], threshold, path)
        if drawer.scale == 1.0 and max(image_rgb.shape[:2]) < 320 and not hinted_small:
            hinted_small = True
            logger.info(
                "%s is small (%dx%d): --scale %d draws it larger with readable labels",
                path, image_rgb.shape[1], image_rgb.shape[0], math.ceil(640 / max(image_rgb.shape[:2])),
            )
        record = gt.get(ground_truth_key(path))
        if drawer.ground_truth is not None and record is None:
            logger.info("%s: not an image of --dataset %s, no ground truth drawn", path, dataset)
        out_path = os.path.join(output, name)
        if not cv2.imwrite(out_path, np.ascontiguousarray(drawer(image_rgb, instances, path)[:, :, ::-1])):
            logger.error("Could not write %s (unsupported extension?)", out_path)
            skipped.append(path)
            continue
        if record is not None and record.get("image_id") is not None:
            results.extend(coco_results(instances, record["image_id"], path, predictor.metadata))
        else:
            results.extend(coco_results(instances, next_id, path, predictor.metadata))
            next_id += 1
    return results, skipped


def run(*, config_file: Optional[str], run_dir: Optional[str], inputs: Sequence[str], output: str,
        opts: Sequence[str] = (), confidence_threshold: Optional[float] = None, write_json: bool = False,
        device: Optional[str] = None, scale: float = 1.0, line_width: Optional[int] = None,
        font_scale: Optional[float] = None, dataset: Optional[str] = None, precision: Optional[str] = None,
        force_bf16: bool = False, dedupe_iou: Optional[float] = None, gt_json: Optional[str] = None,
        image_root: Optional[str] = None, trust_config: bool = False) -> int:
    """The whole demo: exit status 0, or 1 when an input was skipped or the weights are unusable
    (one line ``demo: error: ...`` on stderr). ConfigError for an unknown ``dataset`` (one the
    run or checkpoint recorded is registered as it was; ``gt_json``: a COCO json registered
    nowhere) and for a saved config.yaml refused by the allow-list (unless ``trust_config``).
    ``confidence_threshold`` None: the display threshold stored in the checkpoint, else 0.3
    (:func:`detrex_lite.analysis.threshold.choose_threshold`); the one used is logged."""
    import sys

    import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from detrex_lite.predictor import Predictor
    from detrex_lite.utils import json_io
    from detrex_lite.utils.logger import setup_logger

    from detrex_lite.data.registration import tool_dataset
    from detrex_lite.errors import DatasetError

    setup_logger()
    fast = dict(precision=precision, force_bf16=force_bf16, trust_config=trust_config)
    try:
        if run_dir:
            predictor = Predictor.from_run(run_dir, device=device, opts=list(opts), **fast)
        else:
            predictor = Predictor(config_file, device=device, opts=list(opts), **fast)
    except (CheckpointError, FileNotFoundError) as e:  # unusable weights or run folder: one line
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    threshold = choose_threshold(confidence_threshold, predictor.meta, predictor.checkpoint)
    logger.info("Drawing detections with %s", threshold.describe())
    ground_truth = None
    if dataset or gt_json:
        try:
            saved_in = os.path.dirname(config_file) if config_file and config_file.endswith((".yaml", ".yml")) else None
            dataset = tool_dataset(dataset, gt_json, image_root, run_dirs=[d for d in (run_dir, saved_in) if d],
                                   checkpoint_meta=predictor.meta, lead=f"--dataset {dataset}: not a registered dataset")
        except (DatasetError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
        ground_truth = load_ground_truth(dataset)
    drawer = Drawer(predictor.metadata, scale, line_width, font_scale, ground_truth, dedupe_iou)
    os.makedirs(output, exist_ok=True)
    paths = expand_inputs(inputs)
    progress = tqdm.tqdm(paths, desc="demo", unit="input")
    # Log lines go through tqdm.write while the bar runs, so that they do not split it.
    with logging_redirect_tqdm(loggers=[logging.getLogger("detrex_lite")]):
        results, skipped = run_inputs(predictor, drawer, progress, output, threshold.value, dataset)
    if write_json:
        json_io.dump(results, os.path.join(output, "detections.json"), indent=None)
    logger.info(
        "Processed %d of %d inputs into %s%s", len(paths) - len(skipped), len(paths), output,
        f"; skipped: {', '.join(skipped)}" if skipped else "",
    )
    return 1 if skipped else 0
