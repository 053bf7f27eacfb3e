"""Boxes and labels drawn on an image with OpenCV: the one drawing used by every tool.

What colours and line styles mean is in :mod:`.palette`; where labels go is
:func:`.placement.place_labels` (outside the box, never over another label, never past the
image border). Line width, text size and an output scale are parameters, so a 64 px image can
be drawn at 4x with sharp lines and readable text.
"""
import math
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .palette import DASHED, DOTTED, GROUND_TRUTH_COLOR, LINE_STYLES, OUTLINE_COLOR, SOLID, class_color, text_color_on
from .placement import place_labels

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_DARK = (16, 16, 16)
_DARK_ALPHA = 0.7  # opacity of a ground-truth label's dark tag


def default_line_width(height: int, width: int) -> int:
    """Box line width in pixels for a drawn image of this size: 2 at 640x480, 4 at 1333x800."""
    return max(1, int(round(math.sqrt(height * width) / 250)))


def default_font_scale(height: int, width: int) -> float:
    """OpenCV font scale: text about 10 px high on images up to ~600 px, growing beyond."""
    return max(0.4, math.sqrt(height * width) / 1500)


def scaled_size(height: int, width: int, scale: float) -> Tuple[int, int]:
    """(height, width) of an image drawn at ``scale`` (what :func:`draw_detections` returns)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def dedupe(boxes: np.ndarray, scores: Sequence[float], iou: float) -> np.ndarray:
    """Class-agnostic non-maximum suppression, for display only: the indices of the boxes kept,
    best score first; a box is dropped when it overlaps a better-scoring kept box by IoU > ``iou``.

    Args:
        boxes: (N, 4) absolute x0, y0, x1, y1.
        scores: N scores.
        iou: IoU threshold in [0, 1].

    Returns:
        (K,) int64 indices into ``boxes``, by decreasing score.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: List[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            inter = w * h
            union = areas[k] + areas[i] - inter
            overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
            if (overlap > iou).any():
                continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _rectangle(image: np.ndarray, box, color, width: int, style: str = SOLID) -> None:
    """A box outline exactly ``width`` pixels wide, centred on its edges, in a line style.

    (cv2.rectangle's ``thickness`` is not the drawn width: thickness 3 gives 5 px lines.)
    """
    x0, y0, x1, y1 = box
    lo, hi = (width - 1) // 2, width // 2
    dash, gap = {SOLID: (0, 0), DASHED: (max(4, 3 * width), max(4, 3 * width)),
                 DOTTED: (max(1, width), max(2, 2 * width))}[style]
    for horizontal, fixed, a, b in ((True, y0, x0 - lo, x1 + hi), (True, y1, x0 - lo, x1 + hi),
                                    (False, x0, y0 - lo, y1 + hi), (False, x1, y0 - lo, y1 + hi)):
        step = dash + gap if dash else b - a + 1
        for start in range(a, b + 1, step):
            end = min(start + (dash or step) - 1, b)
            if horizontal:
                cv2.rectangle(image, (start, fixed - lo), (end, fixed + hi), color, -1)
            else:
                cv2.rectangle(image, (fixed - lo, start), (fixed + hi, end), color, -1)


class _Label:
    """One label's text, its tag colours and its size in pixels."""

    def __init__(self, text: str, font_scale: float, background, swatch=None):
        self.text, self.font_scale, self.background, self.swatch = text, font_scale, background, swatch
        self.thickness = 1 if font_scale < 0.8 else 2
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, self.thickness)
        self.pad = max(1, int(round(th * 0.25)))
        self.text_height, self.baseline = th, baseline
        self.swatch_width = th + self.pad if swatch is not None else 0
        self.size = (tw + 2 * self.pad + self.swatch_width, th + baseline + 2 * self.pad)  # (w, h)

    def draw(self, image: np.ndarray, rect) -> None:
        x0, y0, x1, y1 = rect
        if self.background is None:  # dark translucent tag, white text
            region = image[y0:y1, x0:x1].astype(np.float32)
            dark = np.asarray(_DARK, np.float32) * _DARK_ALPHA
            image[y0:y1, x0:x1] = np.round(region * (1 - _DARK_ALPHA) + dark).astype(np.uint8)
            text_color = (255, 255, 255)
        else:
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), self.background, -1)
            text_color = text_color_on(self.background)
        if self.swatch is not None:
            top = y0 + self.pad
            cv2.rectangle(image, (x0 + self.pad, top), (x0 + self.pad + self.text_height - 1,
                                                       top + self.text_height - 1), self.swatch, -1)
        origin = (x0 + self.pad + self.swatch_width, y0 + self.pad + self.text_height)
        cv2.putText(image, self.text, origin, _FONT, self.font_scale, text_color, self.thickness, cv2.LINE_AA)


def _check_styles(styles, n: int, what: str) -> List[str]:
    styles = [SOLID] * n if styles is None else list(styles)
    if len(styles) != n or any(s not in LINE_STYLES for s in styles):
        raise ValueError(f"{what}: expected {n} line styles out of {LINE_STYLES}, got {styles}")
    return styles


def draw_detections(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    class_ids: Sequence[int],
    *,
    styles: Optional[Sequence[str]] = None,
    scale: float = 1.0,
    line_width: Optional[int] = None,
    font_scale: Optional[float] = None,
    gt_boxes: Optional[np.ndarray] = None,
    gt_labels: Optional[Sequence[str]] = None,
    gt_class_ids: Optional[Sequence[int]] = None,
    gt_styles: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Predictions and ground truth with labels on a copy of the image, optionally scaled.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        boxes: (N, 4) predicted boxes, absolute x0, y0, x1, y1 in pixels of ``image_rgb``, most
            important first (e.g. by decreasing score): the first box's line is drawn on top and
            its label placed first.
        labels: N texts (e.g. "circle 87%"); "" draws no label.
        class_ids: N class ids, which choose the colours (:func:`.palette.class_color`).
        styles: N line styles (``SOLID`` default; ``DASHED`` false; ``DOTTED`` matched to a crowd
            region), see :mod:`.palette`.
        scale: the output is ``scale`` times the input size (e.g. 4 for 64 px images); boxes
            and text are drawn at the output size, so they stay sharp.
        line_width: box line width in output pixels (default: :func:`default_line_width`).
        font_scale: OpenCV font scale (default: :func:`default_font_scale`).
        gt_boxes, gt_labels, gt_class_ids, gt_styles: (G, 4) ground-truth boxes (same
            convention as ``boxes``), their texts, class ids (a colour swatch in the label) and
            line styles (``SOLID`` found / not judged, ``DASHED`` missed, ``DOTTED`` crowd):
            white on a black outline under the predictions, labels preferably below the box.

    Returns:
        (round(H * scale), round(W * scale), 3) uint8 RGB.
    """
    if scale <= 0:
        raise ValueError(f"scale={scale}: expected > 0")
    h, w = image_rgb.shape[:2]
    out_h, out_w = scaled_size(h, w, scale)
    if (out_h, out_w) == (h, w):
        out = np.ascontiguousarray(image_rgb).copy()
    else:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        out = cv2.resize(np.ascontiguousarray(image_rgb), (out_w, out_h), interpolation=interpolation)
    lw = int(line_width) if line_width else default_line_width(out_h, out_w)
    fs = float(font_scale) if font_scale else default_font_scale(out_h, out_w)
    sx, sy = out_w / w, out_h / h

    def to_pixels(box):
        x0, y0, x1, y1 = (float(v) for v in box)
        return (int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy)))

    pixels = [to_pixels(b) for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]
    styles = _check_styles(styles, len(pixels), "styles")
    colors = [class_color(int(c)) for c in class_ids]
    gt_pixels = [] if gt_boxes is None else [to_pixels(b) for b in np.asarray(gt_boxes, np.float64).reshape(-1, 4)]
    gt_texts = list(gt_labels) if gt_labels is not None else [""] * len(gt_pixels)
    gt_swatches = [class_color(int(c)) for c in gt_class_ids] if gt_class_ids is not None else [None] * len(gt_pixels)
    gt_styles = _check_styles(gt_styles, len(gt_pixels), "gt_styles")

    # All boxes first, then all labels, so that no box line runs across a label. Ground truth
    # under the predictions, the most important prediction last (on top).
    for box, style in zip(gt_pixels, gt_styles):
        _rectangle(out, box, OUTLINE_COLOR, lw + 2)
        _rectangle(out, box, GROUND_TRUTH_COLOR, lw, style)
    for box, color, style in reversed(list(zip(pixels, colors, styles))):
        _rectangle(out, box, color, lw, style)

    items = [(box, _Label(text, fs, color), False) for box, text, color in zip(pixels, labels, colors) if text]
    items += [(box, _Label(text, fs, None, swatch), True)
              for box, text, swatch in zip(gt_pixels, gt_texts, gt_swatches) if text]
    # a label outside its box starts just past the box line (ground truth: past its outline)
    rects = place_labels([b for b, _, _ in items], [label.size for _, label, _ in items], (out_h, out_w),
                         gap=[lw // 2 + int(is_gt) for _, _, is_gt in items], below_first=[is_gt for _, _, is_gt in items])
    for (_, label, _), rect in zip(items, rects):
        if rect is not None:
            label.draw(out, rect)
    return out
