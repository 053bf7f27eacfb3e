"""Class-index conventions of the released checkpoints and their mapping to ours.

This project predicts contiguous classes 0..K-1 (80 for COCO, in the order of detectron2's
``thing_dataset_id_to_contiguous_id``). The released models index their logits by COCO category
id instead:

* official / HF Deformable DETR: 91 sigmoid logits, row c = COCO id c (id 0 and the 10 unused
  ids between 1 and 90 are never positive). Two-stage models also use row 0 of the encoder
  proposal head as the objectness score (all proposals are trained as class 0).
* official / HF DETR: 92 softmax logits, rows 0..90 = COCO ids, row 91 = "no object".

Mapping keeps rows ``coco_ids`` (and the no-object row for DETR, which stays last), so a kept
class gets exactly the logit it had. For the two-stage proposal head row 0 stays first, because
our model scores proposals with ``enc_outputs_class[..., 0]`` as the official code does.
"""
import logging
import re
from typing import Dict, List, Optional, Sequence

import torch

from .rename import ConversionError

__all__ = ["coco_contiguous_to_id", "select_class_rows", "COCO_NUM_LOGITS_SIGMOID", "COCO_NUM_LOGITS_SOFTMAX"]

logger = logging.getLogger(__name__)

COCO_NUM_LOGITS_SIGMOID = 91  # Deformable DETR: COCO ids 0..90
COCO_NUM_LOGITS_SOFTMAX = 92  # DETR: COCO ids 0..90 + no-object


def coco_contiguous_to_id() -> List[int]:
    """COCO category id of each contiguous class 0..79 (detectron2's builtin COCO metadata)."""
    import detectron2.data.datasets  # noqa: F401  (registers the builtin COCO metadata)
    from detectron2.data import MetadataCatalog

    id_map = MetadataCatalog.get("coco_2017_val").thing_dataset_id_to_contiguous_id
    ids = sorted(id_map, key=id_map.__getitem__)
    assert [id_map[i] for i in ids] == list(range(len(ids)))
    return ids


def select_class_rows(
    state_dict: Dict[str, torch.Tensor], head_pattern: str, rows: Sequence[int]
) -> List[str]:
    """Replace, in place, the weight (K, C) and bias (K,) of every class head whose module name
    fully matches ``head_pattern`` by their ``rows``. Returns the affected module names."""
    head_re = re.compile(head_pattern)
    index = torch.as_tensor(list(rows), dtype=torch.long)
    touched = []
    for key in list(state_dict):
        module, _, kind = key.rpartition(".")
        if kind not in ("weight", "bias") or not head_re.fullmatch(module):
            continue
        value = state_dict[key]
        if int(index.max()) >= value.shape[0]:
            raise ConversionError(
                f"{key}: has {value.shape[0]} classes, cannot take row {int(index.max())}"
            )
        state_dict[key] = value.index_select(0, index)
        if module not in touched:
            touched.append(module)
    return touched


def resolve_class_map(class_map: str, num_logits: int, coco_num_logits: int) -> Optional[str]:
    """``"auto"`` -> ``"coco"`` when the head has the COCO-id layout (91 or 92 rows), else None."""
    if class_map not in ("auto", "coco", "none"):
        raise ValueError(f"class_map must be 'auto', 'coco' or 'none', got {class_map!r}")
    if class_map == "none":
        return None
    if num_logits != coco_num_logits:
        if class_map == "coco":
            raise ConversionError(
                f"class_map='coco' needs a class head with {coco_num_logits} rows (COCO ids), "
                f"the checkpoint has {num_logits}"
            )
        return None
    return "coco"
