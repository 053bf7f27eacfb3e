"""Boxes drawn on images with detectron2's Visualizer, and grids of drawn images."""
import io
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

# Colours (RGB in [0, 1]) of the result views: matched / not matched.
GOOD = (0.10, 0.75, 0.25)
BAD = (0.95, 0.15, 0.15)
NEUTRAL = (0.6, 0.6, 0.6)


def class_color(class_index: int) -> Tuple[float, float, float]:
    """The project's fixed colour of a class (``detrex_lite.utils.draw.class_color``, the one
    tools/demo.py uses) as RGB in [0, 1], as Visualizer takes it."""
    from detrex_lite.utils.draw import class_color as class_color_rgb255

    return tuple(c / 255.0 for c in class_color_rgb255(class_index))


def draw_boxes(image: np.ndarray, boxes_xyxy: np.ndarray, labels: Sequence[str], colors: Sequence[tuple],
               min_side: int = 480, min_font: float = 12.0) -> np.ndarray:
    """Boxes and labels drawn by detectron2's Visualizer.

    Args:
        image: (H, W, 3) uint8 RGB.
        boxes_xyxy: (N, 4) absolute x0, y0, x1, y1 in pixels of ``image``.
        labels, colors: N labels and RGB colours in [0, 1].
        min_side: small images are drawn enlarged so that the longer side is at least this many
            pixels (the labels stay readable on 128 px images).
        min_font: smallest default font size in points at the output scale (12 = labels of
            small boxes about 10 px high).

    Returns:
        (H', W', 3) uint8 RGB, the image scaled by max(1, min_side / max(H, W)).
    """
    from detectron2.utils.visualizer import Visualizer

    scale = max(1.0, min_side / max(image.shape[:2]))
    visualizer = Visualizer(image, metadata=None, scale=scale)
    # Visualizer sizes text from the unscaled image (10 // scale for small images), which makes
    # labels on an enlarged 160 px image about 7 px high; keep the smallest labels readable.
    visualizer._default_font_size = max(visualizer._default_font_size, min_font / scale)
    if len(boxes_xyxy):
        visualizer.overlay_instances(boxes=np.asarray(boxes_xyxy, dtype=np.float64), labels=list(labels),
                                     assigned_colors=list(colors), alpha=0.5)
    return visualizer.get_output().get_image()


def save_grid(images: List[np.ndarray], captions: List[str], path: str, columns: Optional[int] = None,
              cell_inches: float = 3.0, title: Optional[str] = None, dpi: int = 100, palette: bool = False) -> str:
    """A contact sheet: the images in a grid (each fitted into its cell), a caption above each.

    Args:
        columns: default ceil(sqrt(len(images))).
        palette: save with a 256-colour palette (Floyd-Steinberg dithered): about 3x smaller
            files, for documentation.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(cell_inches * columns, (cell_inches + 0.3) * rows),
                             dpi=dpi, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8 if cell_inches >= 2.5 else 7)
    if title:
        fig.suptitle(title, fontsize=11 if cell_inches * columns >= 8 else 9)
    fig.tight_layout()
    if palette:
        from PIL import Image

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        rgb = Image.open(buffer).convert("RGB")
        rgb.quantize(colors=256, palette=rgb.quantize(colors=256), dither=Image.Dither.FLOYDSTEINBERG).save(
            path, optimize=True)
    else:
        fig.savefig(path)
    plt.close(fig)
    return path


def save_side_by_side(left: np.ndarray, right: np.ndarray, left_title: str, right_title: str, title: str,
                      path: str, dpi: int = 100) -> str:
    """Two drawn images next to each other with titles (ground truth | predictions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = left.shape[:2]
    panel = 5.0
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel, panel * h / w + 0.8), dpi=dpi)
    for ax, image, sub in zip(axes, (left, right), (left_title, right_title)):
        ax.imshow(image)
        ax.set_title(sub, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
