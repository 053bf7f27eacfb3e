"""One set-prediction criterion for every DETR-like model: final, auxiliary and encoder stages."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .losses import giou_box_loss, l1_box_loss, sigmoid_focal_loss

__all__ = ["SetCriterion", "get_num_boxes"]

_LOSS_CLASS_TYPES = ("focal_loss", "ce_loss")
_BASE_LOSSES = ("loss_class", "loss_bbox", "loss_giou")


def get_num_boxes(targets: Sequence[Dict[str, torch.Tensor]], device: torch.device) -> float:
    """The number of target boxes averaged over workers (when distributed), at least 1.

    Single-process it is counted on the host (no round trip through the device)."""
    count = float(sum(len(t["labels"]) for t in targets))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return max(count, 1.0)
    num_boxes = torch.as_tensor([count], device=device)
    torch.distributed.all_reduce(num_boxes)
    return max((num_boxes / torch.distributed.get_world_size()).item(), 1.0)


class SetCriterion(nn.Module):
    """Hungarian-matched set loss applied to each prediction stage.

    Stages and the suffix of their loss keys: the final decoder layer (no suffix), the earlier
    decoder layers in ``outputs["aux_outputs"]`` (``_0`` .. ``_{n-1}``) and the two-stage encoder
    proposals in ``outputs["enc_outputs"]`` (``_enc``). Every stage is matched on its own and gets
    the same base weights, so changing the number of decoder layers needs no config change.

    Args:
        num_classes: K, the number of object classes.
        matcher: a module ``(outputs, targets) -> [(query_idx, target_idx)] * B``.
        weight_dict: base weights of "loss_class", "loss_bbox" and "loss_giou"; a zero weight
            skips that loss.
        loss_class_type: "focal_loss" (sigmoid logits (B, Q, K), Deformable DETR) or "ce_loss"
            (softmax logits (B, Q, K+1) with a no-object class, DETR).
        eos_coef: relative weight of the no-object class in "ce_loss".
        alpha, gamma: focal-loss parameters.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Optional[Dict[str, float]] = None,
        loss_class_type: str = "focal_loss",
        eos_coef: float = 0.1,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if loss_class_type not in _LOSS_CLASS_TYPES:
            raise ValueError(f"SetCriterion: loss_class_type must be one of {_LOSS_CLASS_TYPES}, got {loss_class_type!r}")
        if weight_dict is None:
            weight_dict = {"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        unknown = set(weight_dict) - set(_BASE_LOSSES)
        if unknown:
            raise ValueError(f"SetCriterion: unknown keys {sorted(unknown)} in weight_dict; expected base keys {_BASE_LOSSES}")
        self.num_classes = int(num_classes)
        self.matcher = matcher
        self.weight_dict = {k: float(v) for k, v in weight_dict.items()}
        self.loss_class_type = loss_class_type
        self.eos_coef = eos_coef
        self.alpha = alpha
        self.gamma = gamma
        if loss_class_type == "ce_loss":
            empty_weight = torch.ones(self.num_classes + 1)
            empty_weight[-1] = eos_coef
            self.register_buffer("empty_weight", empty_weight, persistent=False)

    # ---- single losses -------------------------------------------------------------------
    def loss_class(self, outputs, targets, indices, num_boxes) -> torch.Tensor:
        logits = outputs["pred_logits"]
        batch_idx, src_idx = _flatten_indices(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        if self.loss_class_type == "ce_loss":
            target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target_classes[batch_idx, src_idx] = target_classes_o
            return F.cross_entropy(logits.transpose(1, 2).float(), target_classes, self.empty_weight)
        onehot = torch.zeros_like(logits, dtype=torch.float32)
        onehot[batch_idx, src_idx, target_classes_o] = 1.0
        return sigmoid_focal_loss(logits.float(), onehot, num_boxes, alpha=self.alpha, gamma=self.gamma)

    def _matched_boxes(self, outputs, targets, indices) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_idx, src_idx = _flatten_indices(indices)
        src = outputs["pred_boxes"][batch_idx, src_idx].float()
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)
        return src, tgt

    def loss_bbox(self, outputs, targets, indices, num_boxes) -> torch.Tensor:
        return l1_box_loss(*self._matched_boxes(outputs, targets, indices), num_boxes)

    def loss_giou(self, outputs, targets, indices, num_boxes) -> torch.Tensor:
        return giou_box_loss(*self._matched_boxes(outputs, targets, indices), num_boxes)

    # ---- stage loop ----------------------------------------------------------------------
    def _stage_losses(self, outputs, targets, num_boxes, suffix: str) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {}
        for name, weight in self.weight_dict.items():
            if weight == 0:
                continue
            losses[name + suffix] = getattr(self, name)(outputs, targets, indices, num_boxes) * weight
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: "pred_logits" (B, Q, K or K+1), "pred_boxes" (B, Q, 4) normalised cxcywh;
                optional "aux_outputs" (list of such dicts, earlier decoder layers first) and
                "enc_outputs" (one such dict, the two-stage proposals, class-agnostic).
            targets: B dicts with "labels" (n_i,) int64 in [0, K) and "boxes" (n_i, 4)
                normalised cxcywh.

        Returns:
            weighted losses: loss_class, loss_bbox, loss_giou, then the same with suffixes
            _0.._{n-1} for aux_outputs and _enc for enc_outputs.
        """
        num_boxes = get_num_boxes(targets, outputs["pred_logits"].device)
        losses = self._stage_losses(outputs, targets, num_boxes, "")
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update(self._stage_losses(aux, targets, num_boxes, f"_{i}"))
        enc = outputs.get("enc_outputs")
        if enc is not None:
            # The encoder proposals are class-agnostic (official two-stage): every target is
            # "object", i.e. class 0 of the proposal logits.
            bin_targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            losses.update(self._stage_losses(enc, bin_targets, num_boxes, "_enc"))
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, weight_dict={self.weight_dict}, "
            f"loss_class_type={self.loss_class_type!r}, eos_coef={self.eos_coef}, alpha={self.alpha}, gamma={self.gamma}"
        )


def _flatten_indices(indices) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(query_idx, target_idx)] * B -> (batch index, query index) of all matched queries."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx
