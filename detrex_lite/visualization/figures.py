"""Drawn images laid out as one figure with matplotlib (Agg): a captioned grid (contact sheet)
and two panels side by side."""
import io
import math
from typing import List, Optional

import numpy as np


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
