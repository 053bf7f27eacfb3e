"""One entry point for every supported source format."""
import logging
from typing import Dict, Mapping, Optional, Tuple

import torch

from .deformable_detr import (
    hf_to_official_deformable_detr,
    is_hf_deformable_detr,
    is_official_deformable_detr,
    official_deformable_detr_to_detrex,
)
from .detr import hf_to_official_detr, is_hf_detr, is_official_detr, official_detr_to_detrex
from .rename import ConversionError, add_prefix, strip_prefix
from .resnet import convert_torchvision_resnet, is_hf_resnet, is_torchvision_resnet

__all__ = ["SOURCES", "detect_source", "convert_state_dict"]

logger = logging.getLogger(__name__)

SOURCES = ("official-deformable-detr", "official-detr", "hf", "torchvision-resnet")


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """(source format, model) of a state dict: model is "deformable_detr", "detr" or "resnet".

    Raises:
        ConversionError: when the keys match no known layout.
    """
    state_dict = strip_prefix(state_dict, "module.")
    # Checked first: our DETR keeps the official transformer/head names (only the backbone differs).
    if any(k.startswith("backbone.stem.") for k in state_dict):
        raise ConversionError("this state dict already has detrex_lite names; load it directly")
    if is_hf_deformable_detr(state_dict):
        return "hf", "deformable_detr"
    if is_hf_detr(state_dict):
        return "hf", "detr"
    if is_official_deformable_detr(state_dict):
        return "official-deformable-detr", "deformable_detr"
    if is_official_detr(state_dict):
        return "official-detr", "detr"
    if is_torchvision_resnet(state_dict) or is_hf_resnet(state_dict):
        return "torchvision-resnet", "resnet"
    sample = ", ".join(list(state_dict)[:5])
    raise ConversionError(f"unrecognised checkpoint layout (first keys: {sample}); pass --from explicitly")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: Optional[str] = None,
    *,
    class_map: str = "auto",
    backbone_prefix: str = "backbone.",
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Convert a state dict to detrex_lite names.

    Args:
        state_dict: the source weights.
        source: one of :data:`SOURCES`, or None to detect it from the keys.
        class_map: "auto", "coco" or "none" (see :mod:`detrex_lite.checkpoint.class_heads`).
        backbone_prefix: where a bare ResNet goes in the detector ("backbone.").

    Returns:
        (state dict, metadata) where metadata records "source" and "architecture", and for a bare
        backbone "partial" = the prefix it covers (the rest of the detector stays initialised).
    """
    state_dict = strip_prefix(state_dict, "module.")
    detected, model = detect_source(state_dict)
    if source is None:
        source = detected
    elif source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    elif source != detected:
        raise ConversionError(f"--from {source} was given but the keys look like {detected} ({model})")
    logger.info(f"converting a {source} {model} checkpoint ({len(state_dict)} tensors)")

    if source == "torchvision-resnet":
        out = add_prefix(convert_torchvision_resnet(state_dict), backbone_prefix)
        return out, {"source": source, "architecture": model, "partial": backbone_prefix}
    if model == "deformable_detr":
        if source == "hf":
            state_dict = hf_to_official_deformable_detr(state_dict)
        out = official_deformable_detr_to_detrex(state_dict, class_map=class_map)
    else:
        if source == "hf":
            state_dict = hf_to_official_detr(state_dict)
        out = official_detr_to_detrex(state_dict, class_map=class_map)
    return out, {"source": source, "architecture": model}
