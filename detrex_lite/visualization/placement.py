"""Where box labels go: greedy placement so that labels neither overlap nor leave the image.

Each label, in the order given (most important first), takes the first of these positions that
lies inside the image and overlaps no label placed before it: above the box's left corner
(outside the box), below it, inside the box's top edge, inside its bottom edge, each also
right-aligned with the box; then the same positions moved away from the box in steps of half a
label height, up to ``max_shift`` label heights. A position that also keeps clear of the other
boxes' lines is preferred to one that crosses them. A label that finds no free place is left
out (its box is still drawn), so labels never cover each other.
"""
from typing import List, Optional, Sequence, Tuple, Union

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _crosses(rect: Rect, box: Rect) -> bool:
    """Whether ``rect`` covers part of ``box``'s outline (or all of it)."""
    x0, y0, x1, y1 = box
    inside = x0 < rect[0] and rect[2] <= x1 and y0 < rect[1] and rect[3] <= y1
    return _overlaps(rect, (x0, y0, x1 + 1, y1 + 1)) and not inside


def _candidates(box: Rect, size: Tuple[int, int], gap: int, below_first: bool, max_shift: float):
    """Top-left corners to try for a label of ``size`` (w, h) at ``box``, best first."""
    x0, y0, x1, y1 = box
    w, h = size
    above, below = y0 - gap - h, y1 + gap + 1
    inside_top, inside_bottom = y0 + gap + 1, y1 - gap - h
    outside = (below, above) if below_first else (above, below)
    xs = (x0 - gap, x1 + gap + 1 - w)
    for y in (*outside, inside_top, inside_bottom):
        for x in xs:
            yield x, y
    step = max(1, h // 2)
    for k in range(1, int(max_shift * 2) + 1):
        for y in ((below + k * step, above - k * step) if below_first else (above - k * step, below + k * step)):
            for x in xs:
                yield x, y


def place_labels(
    boxes: Sequence[Rect],
    sizes: Sequence[Tuple[int, int]],
    image_size: Tuple[int, int],
    *,
    gap: Union[int, Sequence[int]] = 0,
    below_first: Optional[Sequence[bool]] = None,
    occupied: Sequence[Rect] = (),
    max_shift: float = 3.0,
) -> List[Optional[Rect]]:
    """Label rectangles for boxes, placed greedily in list order (put the most important first).

    Args:
        boxes: N boxes (x0, y0, x1, y1) in integer pixels of the drawn image.
        sizes: N label sizes (width, height) in pixels.
        image_size: (height, width) of the drawn image.
        gap: pixels between a box edge and a label outside it (e.g. half the line width), one
            for all labels or one per label.
        below_first: per label, try below the box before above it (default: above first).
        occupied: rectangles no label may cover (e.g. labels already drawn).
        max_shift: how far, in label heights, a label may move away from its box.

    Returns:
        N rectangles (x0, y0, x1, y1) with x1/y1 exclusive, inside the image and pairwise
        disjoint, or None for a label that has no free place.
    """
    height, width = image_size
    boxes = [tuple(int(v) for v in b) for b in boxes]
    gaps = [int(gap)] * len(boxes) if isinstance(gap, (int, float)) else [int(g) for g in gap]
    placed: List[Rect] = list(occupied)
    out: List[Optional[Rect]] = []
    for i, (box, (w, h)) in enumerate(zip(boxes, sizes)):
        chosen, fallback = None, None
        if 0 < w <= width and 0 < h <= height:
            first_below = bool(below_first[i]) if below_first is not None else False
            others = [b for j, b in enumerate(boxes) if j != i and b != box]
            for x, y in _candidates(box, (w, h), gaps[i], first_below, max_shift):
                x = min(max(0, x), width - w)  # slide along the border rather than leave the image
                if y < 0 or y + h > height:
                    continue
                rect = (x, y, x + w, y + h)
                if any(_overlaps(rect, other) for other in placed):
                    continue
                if not any(_crosses(rect, b) for b in others):
                    chosen = rect
                    break
                fallback = fallback or rect
        chosen = chosen or fallback
        out.append(chosen)
        if chosen is not None:
            placed.append(chosen)
    return out
