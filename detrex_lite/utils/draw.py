"""Detections (and optionally ground truth) drawn on an image with OpenCV, readable at any size.

Unlike detectron2's Visualizer, which writes a label inside the top-left corner of its box (on a
small object the label hides the object), a label here sits outside its box: predictions above
the box, ground truth below it, moved inside the image when the box touches its border. Line
width, text size and an output scale are parameters, so a 64 px image can be drawn at 4x.
"""
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

# Prediction colours (RGB) by class: matplotlib's tab10 without its green, which is reserved for
# ground truth so that the two never look alike.
CLASS_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
GROUND_TRUTH_COLOR: Tuple[int, int, int] = (0, 230, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> Tuple[int, int, int]:
    """The RGB colour of a predicted class (fixed per class id)."""
    return CLASS_COLORS[class_id % len(CLASS_COLORS)]


def default_line_width(height: int, width: int) -> int:
    """Box line width in pixels for a drawn image of this size: 2 at 640x480, 4 at 1333x800."""
    return max(1, int(round(math.sqrt(height * width) / 250)))


def default_font_scale(height: int, width: int) -> float:
    """OpenCV font scale: text about 10 px high on images up to ~600 px, growing beyond."""
    return max(0.35, math.sqrt(height * width) / 1500)


def _rectangle(image: np.ndarray, box, color, width: int, dash: int = 0) -> None:
    """A box outline exactly ``width`` pixels wide, centred on its edges; dashed if ``dash`` > 0.

    (cv2.rectangle's ``thickness`` is not the drawn width: thickness 3 gives 5 px lines.)
    """
    x0, y0, x1, y1 = box
    lo, hi = (width - 1) // 2, width // 2

    def band(ax, ay, bx, by):
        cv2.rectangle(image, (ax, ay), (bx, by), color, -1)

    for horizontal, fixed, a, b in ((True, y0, x0 - lo, x1 + hi), (True, y1, x0 - lo, x1 + hi),
                                    (False, x0, y0 - lo, y1 + hi), (False, x1, y0 - lo, y1 + hi)):
        step = 2 * dash if dash > 0 else b - a + 1
        for start in range(a, b + 1, step):
            end = min(start + (dash if dash > 0 else step) - 1, b)
            if horizontal:
                band(start, fixed - lo, end, fixed + hi)
            else:
                band(fixed - lo, start, fixed + hi, end)


def _label(image: np.ndarray, text: str, box, color, font_scale: float, above: bool) -> None:
    """``text`` on a filled tag outside ``box`` (above or below it), kept inside the image."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    thickness = 1 if font_scale < 0.8 else 2
    (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    pad = max(1, int(round(th * 0.25)))
    tag_h, tag_w = th + baseline + 2 * pad, tw + 2 * pad
    top = y0 - tag_h if above else y1 + 1
    if top < 0:  # no room above: below the box
        top = y1 + 1
    if top + tag_h > h:  # no room below either: inside the box's top edge
        top = max(0, min(y0, h - tag_h))
    left = min(max(0, x0), max(0, w - tag_w))
    cv2.rectangle(image, (left, top), (left + tag_w, top + tag_h), color, -1)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(image, text, (left + pad, top + pad + th), _FONT, font_scale, text_color, thickness, cv2.LINE_AA)


def scaled_size(height: int, width: int, scale: float) -> Tuple[int, int]:
    """(height, width) of an image drawn at ``scale`` (what :func:`draw_detections` returns)."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def draw_detections(
    image_rgb: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    class_ids: Sequence[int],
    *,
    scale: float = 1.0,
    line_width: Optional[int] = None,
    font_scale: Optional[float] = None,
    gt_boxes: Optional[np.ndarray] = None,
    gt_labels: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Boxes with labels on a copy of the image, optionally scaled, with ground truth under them.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        boxes: (N, 4) absolute x0, y0, x1, y1 in pixels of ``image_rgb``; drawn in list order,
            so pass them by increasing score to put the best labels on top.
        labels: N texts (e.g. "circle 87%"), each drawn above its box.
        class_ids: N class ids, which choose the colours (``class_color``).
        scale: the output is ``scale`` times the input size (e.g. 4 for 64 px images); boxes
            and text are drawn at the output size, so they stay sharp.
        line_width: box line width in output pixels (default: ``default_line_width``).
        font_scale: OpenCV font scale (default: ``default_font_scale``).
        gt_boxes, gt_labels: (G, 4) ground-truth boxes (same convention as ``boxes``) and
            their texts, drawn dashed GROUND_TRUTH_COLOR on black, labelled below the box.

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

    gt_pixels, gt_texts = [], []
    if gt_boxes is not None and len(gt_boxes):
        gt_pixels = [to_pixels(b) for b in gt_boxes]
        gt_texts = list(gt_labels) if gt_labels is not None else [""] * len(gt_pixels)
    pixels = [to_pixels(b) for b in boxes]
    colors = [class_color(int(c)) for c in class_ids]

    # All boxes first, then all labels, so that no box line runs across a label; ground truth
    # under the predictions. Ground truth is dashed green on black: visible on any background.
    for box in gt_pixels:
        _rectangle(out, box, (0, 0, 0), lw)
        _rectangle(out, box, GROUND_TRUTH_COLOR, lw, dash=max(4, 3 * lw))
    for box, color in zip(pixels, colors):
        _rectangle(out, box, color, lw)
    for box, text in zip(gt_pixels, gt_texts):
        if text:
            _label(out, text, box, GROUND_TRUTH_COLOR, fs, above=False)
    for box, text, color in zip(pixels, labels, colors):
        if text:
            _label(out, text, box, color, fs, above=True)
    return out
