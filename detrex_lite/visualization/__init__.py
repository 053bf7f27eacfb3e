"""The one drawing of boxes used by every tool (demo, browse_dataset, visualize_results): one
palette (colour = class; line style = correct / false / crowd; ground truth white on black),
one label placement (labels never overlap or leave the image), display-only duplicate
suppression, and the figures that lay drawn images out."""
from .draw import dedupe, default_font_scale, default_line_width, draw_detections, scaled_size
from .figures import save_grid, save_side_by_side
from .palette import DASHED, DOTTED, GROUND_TRUTH_COLOR, LINE_STYLES, SOLID, class_color, text_color_on
from .placement import place_labels

__all__ = [
    "DASHED",
    "DOTTED",
    "GROUND_TRUTH_COLOR",
    "LINE_STYLES",
    "SOLID",
    "class_color",
    "dedupe",
    "default_font_scale",
    "default_line_width",
    "draw_detections",
    "place_labels",
    "save_grid",
    "save_side_by_side",
    "scaled_size",
    "text_color_on",
]
