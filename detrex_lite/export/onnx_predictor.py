"""Detections from an exported ONNX detector with onnxruntime, numpy and Pillow only: no torch,
no detectron2 (``tools/onnx_inference.py``; for machines that deploy the export).

It does to an image what :class:`detrex_lite.predictor.Predictor` does, from what
``tools/export_onnx.py`` records in the file's ``metadata_props`` (JSON strings):

1. read the file as 8-bit RGB, EXIF orientation applied;
2. resize as the config's test augmentation (``test_resize``: detectron2's
   ``ResizeShortestEdge``: the short side to ``short_edge_length``, scaled down further when the
   long side would exceed ``max_size``, sides rounded to the nearest pixel; Pillow resampling
   ``interp``);
3. normalise ``(rgb - pixel_mean) / pixel_std`` in float32 (0-255 scale) and lay it out
   (1, 3, h, w); ``image_sizes`` is [[h, w]]. One image needs no padding (a graph exported with
   ``--fixed-size`` gets it zero-padded at the bottom/right to its fixed height and width);
4. run the graph (``--format detections``: ``scores`` (1, k) descending, ``labels`` (1, k),
   ``boxes`` (1, k, 4) absolute x0, y0, x1, y1 in pixels of the resized image);
5. scale the boxes by original / resized size per axis, clip them to the original image, drop
   empty ones (as detectron2's ``detector_postprocess``) and keep scores >= the threshold;
   ``class_names`` (when recorded) name the labels.

Everything that can go wrong with the inputs is an :class:`OnnxInferenceError` (a one-line
message naming the file and what is missing).
"""
import json
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detrex_lite.errors import DetrexError

# Without a recorded threshold (as detrex_lite.analysis.threshold.DEFAULT_THRESHOLD, which this
# torch-free module does not import).
DEFAULT_THRESHOLD = 0.3

__all__ = [
    "Detection", "ImageDetections", "OnnxInferenceError", "OnnxPredictor", "onnx_inference_main", "read_rgb",
    "resized_shape",
]


class OnnxInferenceError(DetrexError, ValueError):
    """An ONNX file or image that onnx_inference cannot use; the message names it."""


class Detection(NamedTuple):
    """One detection at the original image size."""

    class_id: int  # the graph's contiguous label (0..K-1)
    class_name: str  # from the file's class_names, else str(class_id)
    score: float
    box: Tuple[float, float, float, float]  # absolute x0, y0, x1, y1 in original-image pixels


class ImageDetections(NamedTuple):
    """The detections of one image (by descending score) and the sizes involved."""

    file_name: str
    height: int  # original size
    width: int
    resized: Tuple[int, int]  # (h, w) the graph saw
    detections: List[Detection]  # score >= the threshold
    highest_score: float  # over all non-empty detections, also those below the threshold


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """(h, w) after detectron2's ``ResizeShortestEdge(short_edge, max_size)`` on a
    height x width image: the short side becomes ``short_edge`` unless the long side would then
    exceed ``max_size`` (then the long side becomes ``max_size``); sides rounded half up."""
    scale = short_edge / min(height, width)
    new_h, new_w = (float(short_edge), scale * width) if height < width else (scale * height, float(short_edge))
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def read_rgb(path: str) -> np.ndarray:
    """The image file as (H, W, 3) uint8 RGB, EXIF orientation applied."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise OnnxInferenceError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise OnnxInferenceError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def _json_prop(props: Dict[str, str], key: str, path: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as e:
        raise OnnxInferenceError(f"{path}: metadata {key!r} is not JSON ({e})") from None


class OnnxPredictor:
    """Runs an ONNX file written by ``tools/export_onnx.py`` (``--format detections``) on images.

    Args:
        path: the .onnx file.
        short_edge, max_size: the test resize; default: the file's ``test_resize`` (required
            when the file records none).
        num_threads: onnxruntime's intra-op threads (None: its default).

    Example::

        predictor = OnnxPredictor("output/run/model.onnx")
        result = predictor("image.jpg", threshold=0.3)
        for det in result.detections:
            print(det.class_name, det.score, det.box)
    """

    def __init__(
        self,
        path: str,
        *,
        short_edge: Optional[int] = None,
        max_size: Optional[int] = None,
        num_threads: Optional[int] = None,
    ):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise OnnxInferenceError(f"ONNX file {path} does not exist")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise OnnxInferenceError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
        self.path = path
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [key for key in ("format", "pixel_mean", "pixel_std") if key not in props]
        if missing:
            raise OnnxInferenceError(
                f"{path} records no {', '.join(missing)} in its metadata: export it again with tools/export_onnx.py"
            )
        output_format = _json_prop(props, "format", path)
        if output_format != "detections":
            raise OnnxInferenceError(f"{path} was exported with --format {output_format}; export it with --format detections")
        self.pixel_mean = np.asarray(_json_prop(props, "pixel_mean", path), dtype=np.float32).reshape(3, 1, 1)
        self.pixel_std = np.asarray(_json_prop(props, "pixel_std", path), dtype=np.float32).reshape(3, 1, 1)
        recorded = _json_prop(props, "test_resize", path) if "test_resize" in props else {}
        self.short_edge = short_edge if short_edge is not None else recorded.get("short_edge_length")
        self.max_size = max_size if max_size is not None else recorded.get("max_size")
        if self.short_edge is None or self.max_size is None:
            raise OnnxInferenceError(
                f"{path} records no test_resize in its metadata: give --short-edge and --max-size "
                "(the config's dataloader.test.mapper.augmentation)"
            )
        self.resample = Image.Resampling[recorded.get("interp", "bilinear").upper()]
        self.class_names: Optional[List[str]] = _json_prop(props, "class_names", path) if "class_names" in props else None
        # The score threshold used when none is given: the one the checkpoint's last evaluation
        # suggested (max F1 at IoU 0.5 on the validation set), recorded by the export, else 0.3.
        stored = _json_prop(props, "display_threshold", path) if "display_threshold" in props else None
        if isinstance(stored, dict) and isinstance(stored.get("score"), (int, float)):
            self.threshold = float(stored["score"])
            self.threshold_source = f"{stored.get('source', 'recorded')}, recorded in {path}"
        else:
            self.threshold = DEFAULT_THRESHOLD
            self.threshold_source = f"no threshold recorded in {path}; default"
        height, width = self.session.get_inputs()[0].shape[2:]
        # A graph exported with --fixed-size has int height/width; a dynamic one has names.
        self.fixed_canvas = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def preprocess(self, rgb: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB -> the graph's ``images`` (1, 3, h, w) float32 normalised (padded
        to a fixed canvas) and ``image_sizes`` (1, 2) int64 (h, w) of the resized image."""
        new_h, new_w = resized_shape(rgb.shape[0], rgb.shape[1], self.short_edge, self.max_size)
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), self.resample))
        chw = (resized.transpose(2, 0, 1).astype(np.float32) - self.pixel_mean) / self.pixel_std
        if self.fixed_canvas is not None:
            canvas_h, canvas_w = self.fixed_canvas
            if new_h > canvas_h or new_w > canvas_w:
                raise OnnxInferenceError(
                    f"{self.path} takes at most {canvas_h}x{canvas_w} (exported with --fixed-size); "
                    f"the image resizes to {new_h}x{new_w}"
                )
            padded = np.zeros((3, canvas_h, canvas_w), dtype=np.float32)
            padded[:, :new_h, :new_w] = chw
            chw = padded
        return chw[None], np.array([[new_h, new_w]], dtype=np.int64)

    def predict_rgb(self, rgb: np.ndarray, threshold: float, file_name: str = "") -> ImageDetections:
        """Detections of one (H, W, 3) uint8 RGB image with score >= ``threshold``."""
        images, image_sizes = self.preprocess(rgb)
        scores, labels, boxes = self.session.run(["scores", "labels", "boxes"], {"images": images, "image_sizes": image_sizes})
        height, width = rgb.shape[:2]
        new_h, new_w = (int(v) for v in image_sizes[0])
        scale = np.array([width / new_w, height / new_h, width / new_w, height / new_h], dtype=np.float32)
        boxes = boxes[0] * scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scores, labels, boxes = scores[0][nonempty], labels[0][nonempty], boxes[nonempty]
        detections = [
            Detection(int(label), self.class_name(int(label)), float(score), tuple(float(v) for v in box))
            for score, label, box in zip(scores, labels, boxes)
            if score >= threshold
        ]
        highest = float(scores.max()) if scores.size else 0.0
        return ImageDetections(file_name, height, width, (new_h, new_w), detections, highest)

    def class_name(self, class_id: int) -> str:
        """The name of the graph's label ``class_id`` (its number when the file records none)."""
        if self.class_names is not None and 0 <= class_id < len(self.class_names):
            return self.class_names[class_id]
        return str(class_id)

    def __call__(self, path: str, threshold: Optional[float] = None) -> ImageDetections:
        """Detections of the image file ``path`` with score >= ``threshold`` (default:
        ``self.threshold``, the file's recorded display threshold or 0.3)."""
        return self.predict_rgb(read_rgb(path), self.threshold if threshold is None else threshold, file_name=path)

    def predict(self, paths: Sequence[str], threshold: Optional[float] = None) -> List[ImageDetections]:
        """One :class:`ImageDetections` per image file, one graph run each (no padding)."""
        return [self(path, threshold) for path in paths]


def _as_json(result: ImageDetections) -> Dict[str, Any]:
    return {
        "file_name": result.file_name, "height": result.height, "width": result.width,
        "detections": [
            {"class_id": d.class_id, "class_name": d.class_name, "score": d.score, "box_xyxy": list(d.box)}
            for d in result.detections
        ],
    }


def onnx_inference_main(args) -> None:
    """``tools/onnx_inference.py`` with its parsed arguments (``onnx``, ``images``, ``threshold``,
    ``json``, ``short_edge``, ``max_size``, ``num_threads``): prints each image's detections
    (or, when none reaches the threshold, the highest score), writes ``--json``, and ends with
    one line saying how many detections of how many images went where."""
    predictor = OnnxPredictor(args.onnx, short_edge=args.short_edge, max_size=args.max_size, num_threads=args.num_threads)
    if args.json:
        from detrex_lite.utils.files import check_writable

        check_writable(args.json, "--json")
    threshold = predictor.threshold if args.threshold is None else args.threshold
    source = predictor.threshold_source if args.threshold is None else "--threshold"
    print(f"score threshold {threshold:.3g} ({source})")
    results = []
    for path in args.images:
        result = predictor(path, threshold)
        results.append(result)
        print(f"{path} (h x w = {result.height}x{result.width}, resized to {result.resized[0]}x{result.resized[1]}):")
        if not result.detections:
            print(f"  no detection with score >= {threshold:.3g} (highest score {result.highest_score:.3f})")
        for d in result.detections:
            x0, y0, x1, y1 = d.box
            print(f"  {d.class_name:<16} {d.score:.3f}  {x0:8.1f} {y0:8.1f} {x1:8.1f} {y1:8.1f}")
    total = sum(len(r.detections) for r in results)
    summary = (
        f"{total} detection{'' if total == 1 else 's'} with score >= {threshold:.3g} "
        f"in {len(results)} image{'' if len(results) == 1 else 's'}"
    )
    if args.json:
        from detrex_lite.utils import json_io

        json_io.dump([_as_json(r) for r in results], args.json)
        summary += f", written to {args.json}"
    print(summary)
