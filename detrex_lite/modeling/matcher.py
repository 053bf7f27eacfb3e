"""Hungarian (one-to-one) matching between predictions and ground truth (DETR Sec. 3.1)."""
from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy, degenerate_boxes, generalized_box_iou

__all__ = ["HungarianMatcher"]

_COST_CLASS_TYPES = ("focal_loss_cost", "ce_cost")


class HungarianMatcher(nn.Module):
    """Optimal bipartite assignment of predictions to targets under

        C = cost_class * C_class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy)).

    Args:
        cost_class: weight of the classification cost.
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes.
        cost_giou: weight of the negative generalized IoU.
        cost_class_type: "focal_loss_cost" (sigmoid logits, Deformable DETR: the focal loss of a
            positive minus that of a negative) or "ce_cost" (softmax logits with a trailing
            no-object column, DETR: minus the target-class probability).
        alpha, gamma: focal-loss parameters of the focal cost.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        cost_class_type: str = "focal_loss_cost",
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class_type not in _COST_CLASS_TYPES:
            raise ValueError(f"HungarianMatcher: cost_class_type must be one of {_COST_CLASS_TYPES}, got {cost_class_type!r}")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_class_type = cost_class_type
        self.alpha = alpha
        self.gamma = gamma

    def _class_cost(self, logits: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """logits: (P, K) or (P, K+1); tgt_ids: (T,) -> (P, T)."""
        if self.cost_class_type == "focal_loss_cost":
            prob = logits.sigmoid()
            neg = (1 - self.alpha) * prob**self.gamma * (-(1 - prob + 1e-8).log())
            pos = self.alpha * (1 - prob) ** self.gamma * (-(prob + 1e-8).log())
            return pos[:, tgt_ids] - neg[:, tgt_ids]
        return -logits.softmax(-1)[:, tgt_ids]

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K) (or (B, Q, K+1) for ce_cost) and "pred_boxes"
                (B, Q, 4) normalised cxcywh.
            targets: B dicts with "labels" (n_i,) int64 and "boxes" (n_i, 4) normalised cxcywh.

        Returns:
            B pairs (query_indices, target_indices) of int64 CPU tensors of length
            min(Q, n_i), sorted by query index.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, num_queries = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(bs)]

        # The costs are computed for all images at once (one launch on GPU), then the
        # per-image blocks are cut out: block i only involves image i's queries and targets.
        out_logits = logits.flatten(0, 1).float()
        out_boxes = boxes.flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)

        cost_class = self._class_cost(out_logits, tgt_ids)
        cost_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        out_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(out_boxes), box_cxcywh_to_xyxy(tgt_boxes)
        cost_giou = -generalized_box_iou(out_xyxy, tgt_xyxy, check=False)
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        # The cost goes to the CPU for the assignment (the one wait for the GPU here); the
        # degenerate-box flags are copied right after it, when nothing is left to wait for.
        flags = torch.stack([degenerate_boxes(out_xyxy), degenerate_boxes(tgt_xyxy)])
        cost = cost.view(bs, num_queries, -1).cpu()
        degenerate = flags.cpu().tolist()
        if degenerate[1]:
            raise ValueError("HungarianMatcher: target boxes have x1 < x0 or y1 < y0 (expected cxcywh, w, h >= 0)")
        if degenerate[0] or not torch.isfinite(cost).all():
            # Only on this failure path: name the terms at fault (the trainer reports them).
            terms = [name for name, c in (("class", cost_class), ("bbox", cost_bbox), ("giou", cost_giou))
                     if not bool(torch.isfinite(c).all())]
            what = f"{', '.join(terms)} cost" if terms else "cost"
            if degenerate[0]:
                what += ", predicted boxes with x1 < x0 or y1 < y0"
            raise FloatingPointError(f"HungarianMatcher: inf/nan in the {what} (diverged predictions)")

        indices = []
        for i, block in enumerate(cost.split(sizes, -1)):
            if sizes[i] == 0:
                indices.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(block[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, "
            f"cost_class_type={self.cost_class_type!r}, alpha={self.alpha}, gamma={self.gamma}"
        )
