"""DINO's criterion: :class:`SetCriterion`'s Hungarian-matched stages, the encoder stage with
class labels, and the denoising losses on the known assignment (Sec. 3.3)."""
from typing import Dict, List

import torch

from detrex_lite.modeling.criterion import SetCriterion, get_num_boxes

from .denoising import denoising_indices

__all__ = ["DINOCriterion"]


class DINOCriterion(SetCriterion):
    """:class:`SetCriterion` plus DINO's encoder and denoising stages.

    Stages and loss-key suffixes: the matching queries of the last decoder layer (none), of the
    earlier layers (``_0`` ..), the top-Q encoder tokens (``_enc``, matched, with the class labels
    unlike two-stage Deformable DETR's class-agnostic proposals) and the denoising queries of
    every decoder layer (``_dn``, ``_dn_0`` ..). The Hungarian matcher only ever sees the matching
    queries; denoising positives are assigned to the box they were made from, negatives and padding
    slots have class target "no object" (all-zero focal targets) and no box loss. The denoising
    losses are normalised by the number of boxes times the number of groups (official), and use the
    same base weights.
    """

    def _dn_losses(self, dn: Dict, targets, num_boxes: float, suffix: str) -> Dict[str, torch.Tensor]:
        indices = denoising_indices(targets, dn["num_groups"], dn["max_boxes"])
        norm = num_boxes * dn["num_groups"]
        losses = {}
        for name, weight in self.weight_dict.items():
            if weight != 0:
                losses[name + suffix] = getattr(self, name)(dn, targets, indices, norm) * weight
        return losses

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: as :meth:`SetCriterion.forward` over the matching queries, plus optional
                "enc_topk_outputs" (the selected encoder tokens: "pred_logits" (B, Q, K),
                "pred_boxes" (B, Q, 4)) and "dn_outputs" ("pred_logits" (B, P, K), "pred_boxes"
                (B, P, 4), "aux_outputs" of the earlier layers, "num_groups", "max_boxes").
            targets: B dicts with "labels" (n_i,) and "boxes" (n_i, 4) normalised cxcywh.

        Returns:
            weighted losses (class docstring for the keys).
        """
        matching = {k: v for k, v in outputs.items() if k not in ("enc_topk_outputs", "dn_outputs")}
        losses = super().forward(matching, targets)
        num_boxes = get_num_boxes(targets, outputs["pred_logits"].device)
        enc = outputs.get("enc_topk_outputs")
        if enc is not None:
            losses.update(self._stage_losses(enc, targets, num_boxes, "_enc"))
        dn = outputs.get("dn_outputs")
        if dn is not None:
            losses.update(self._dn_losses(dn, targets, num_boxes, "_dn"))
            for i, aux in enumerate(dn.get("aux_outputs") or []):
                losses.update(self._dn_losses({**dn, **aux}, targets, num_boxes, f"_dn_{i}"))
        return losses
