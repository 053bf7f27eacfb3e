"""What colours and line styles mean in every picture the tools draw (one meaning everywhere).

* Colour = class. Each class id has one fixed colour (matplotlib's tab10, then evenly spread
  hues), used for its boxes and for its label's background; colour never encodes right/wrong.
* Line style = how a box relates to the truth: ``SOLID`` a prediction (correct, or not judged)
  or a ground-truth object that was found; ``DASHED`` a false prediction or a missed object;
  ``DOTTED`` a prediction matched to a crowd region (ignored by COCO's evaluation) or a crowd
  region itself.
* Ground truth is white with a thin black outline (visible on any background), its label a dark
  translucent tag with white text and a swatch of the class colour; predictions are drawn in
  their class colour, their label a tag of that colour with black or white text, whichever
  contrasts more.
"""
import colorsys
from typing import Tuple

RGB = Tuple[int, int, int]

SOLID, DASHED, DOTTED = "solid", "dashed", "dotted"
LINE_STYLES = (SOLID, DASHED, DOTTED)

# matplotlib's tab10 (RGB).
_TAB10: Tuple[RGB, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
GROUND_TRUTH_COLOR: RGB = (255, 255, 255)
OUTLINE_COLOR: RGB = (0, 0, 0)


def class_color(class_id: int) -> RGB:
    """The RGB colour (0-255) of a class id: tab10 for ids 0-9, then hues spread by the golden
    ratio (saturated, never white or grey), the same on every call."""
    class_id = int(class_id)
    if 0 <= class_id < len(_TAB10):
        return _TAB10[class_id]
    hue = (0.61803398875 * class_id) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.85)
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def text_color_on(background: RGB) -> RGB:
    """Black or white, whichever reads better on ``background`` (by its luminance)."""
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)
