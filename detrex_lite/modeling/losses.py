"""Loss functions of DETR-family criteria (summed over elements, normalised by #boxes)."""
import torch
from torch.nn import functional as F

from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou

__all__ = ["sigmoid_focal_loss", "l1_box_loss", "giou_box_loss"]


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, Eq. 5) summed over all elements and divided by ``num_boxes``.

    This equals the official Deformable DETR value ``loss.mean(1).sum() / num_boxes * Q``.

    Args:
        inputs: (..., K) logits.
        targets: same shape, binary {0, 1} (float).
        num_boxes: the normaliser (number of target boxes across the batch, >= 1).
        alpha: weight of the positives (1 - alpha for negatives); a negative value disables it.
        gamma: focusing exponent.
    """
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def l1_box_loss(src_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """Sum of L1 distances of matched (n, 4) cxcywh boxes divided by ``num_boxes``."""
    return F.l1_loss(src_boxes, target_boxes, reduction="sum") / num_boxes


def giou_box_loss(src_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """Sum of (1 - GIoU) of matched (n, 4) cxcywh boxes divided by ``num_boxes``."""
    giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
    return (1 - giou).sum() / num_boxes
