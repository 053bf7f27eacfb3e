"""Class-index conventions of released COCO checkpoints, and their mapping to ours.

This project predicts contiguous classes 0..K-1 (80 for COCO, in the order of detectron2's
``thing_dataset_id_to_contiguous_id``). Released COCO detectors often index their logits by COCO
category id instead: 91 sigmoid logits (row c = COCO id c; id 0 and the 10 unused ids between 1
and 90 are never positive), or 92 softmax logits (ids 0..90, then "no object").

Mapping keeps rows ``coco_ids`` (and a no-object row, which stays last), so a kept class gets
exactly the logit it had. Which keys are class heads, and which rows a special head keeps (e.g. a
proposal head scored by its row 0), is the model family's knowledge: its converter calls
:func:`select_class_rows` with its own key pattern and rows.
"""
import logging
import re
from typing import Dict, List, Optional, Sequence

import torch

from .rename import ConversionError

__all__ = [
    "coco_contiguous_to_id", "select_class_rows", "resolve_class_map", "COCO_NUM_LOGITS_SIGMOID", "COCO_NUM_LOGITS_SOFTMAX",
]

logger = logging.getLogger(__name__)

COCO_NUM_LOGITS_SIGMOID = 91  # sigmoid classifiers: COCO ids 0..90
COCO_NUM_LOGITS_SOFTMAX = 92  # softmax classifiers: COCO ids 0..90 + no-object


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
