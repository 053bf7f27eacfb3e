"""Box conversions and IoU for DETR-family models.

Two conventions appear throughout detrex_lite:

* ``cxcywh``: (center x, center y, width, height), used by the heads and the criterion, usually
  normalised to [0, 1] relative to the unpadded image.
* ``xyxy``: (x0, y0, x1, y1), used by detectron2 ``Boxes`` (absolute pixels) and by the IoU
  functions below (any unit, as long as both inputs share it).
"""
from typing import Tuple

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "paired_generalized_box_iou",
    "degenerate_boxes",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, same unit."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, same unit."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area (negative widths/heights are not clamped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of two sets of xyxy boxes.

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (M, 4) xyxy.

    Returns:
        iou: (N, M) intersection over union.
        union: (N, M) union area (needed by :func:`generalized_box_iou`).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def degenerate_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """0-dim bool tensor, on the boxes' device: does any (..., 4) xyxy box have x1 < x0 or
    y1 < y0 (or a NaN)? Kept on the device so that callers can read it when they synchronise
    anyway (reading it is a host-device synchronisation on the GPU)."""
    return ~(boxes[..., 2:] >= boxes[..., :2]).all()


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes.

    Args:
        boxes1: (N, 4) xyxy with x1 >= x0 and y1 >= y0.
        boxes2: (M, 4) xyxy.
        check: raise ValueError on degenerate boxes, which give inf/nan (a host-device
            synchronisation on the GPU; callers that check elsewhere pass False).

    Returns:
        (N, M) GIoU in [-1, 1].
    """
    if check:
        if degenerate_boxes(boxes1):
            raise ValueError("generalized_box_iou: boxes1 has x1 < x0 or y1 < y0 (expected xyxy)")
        if degenerate_boxes(boxes2):
            raise ValueError("generalized_box_iou: boxes2 has x1 < x0 or y1 < y0 (expected xyxy)")
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of corresponding xyxy boxes: (N, 4), (N, 4) -> (N,), the diagonal of
    :func:`generalized_box_iou` without building the (N, N) matrix. No degenerate-box check
    (the set loss gets boxes the matcher has checked)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter_wh = (torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area1 + area2 - inter
    enclosing_wh = (torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])).clamp(min=0)
    enclosing = enclosing_wh[:, 0] * enclosing_wh[:, 1]
    return inter / union - (enclosing - union) / enclosing
