"""One entry point for every source format: the registered families' formats
(:attr:`WeightFamily.formats`) and torchvision ImageNet ResNets (the library's backbone)."""
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .family import WeightFamily, WeightFormat, registered_weight_families
from .rename import ConversionError, add_prefix, strip_prefix
from .resnet import convert_torchvision_resnet, is_hf_resnet, is_torchvision_resnet

__all__ = ["RESNET_SOURCE", "source_formats", "detect_source", "convert_state_dict", "converted_arch", "describe_converted"]

logger = logging.getLogger(__name__)

RESNET_SOURCE = "torchvision-resnet"  # a bare ImageNet backbone (detrex_lite.checkpoint.resnet)


def source_formats() -> Tuple[str, ...]:
    """Every ``--from`` value: the formats of one registered family (by family name), then those
    several families share ("hf"), then "torchvision-resnet"."""
    names = [fmt.name for family in registered_weight_families() for fmt in family.formats]
    own = [n for n in names if names.count(n) == 1]
    shared = [n for i, n in enumerate(names) if names.count(n) > 1 and n not in names[:i]]
    return tuple(own + shared) + (RESNET_SOURCE,)


def _claims(state_dict: Mapping[str, torch.Tensor]) -> List[Tuple[WeightFamily, WeightFormat]]:
    """The (family, format) pairs whose ``detect`` accepts the keys."""
    return [(family, fmt) for family in registered_weight_families() for fmt in family.formats if fmt.detect(state_dict)]


def detect_source(state_dict: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """(source format, family name) of a state dict; the family is "resnet" for a bare backbone.

    Raises:
        ConversionError: when the keys have this project's names, match no known layout, or
            match the layouts of two families.
    """
    state_dict = strip_prefix(state_dict, "module.")
    # Checked first: a family may keep the official names for everything but the backbone, whose
    # detectron2 names are this project's.
    if any(k.startswith("backbone.stem.") for k in state_dict):
        raise ConversionError("this state dict already has detrex_lite names; load it directly")
    claims = _claims(state_dict)
    if len(claims) > 1:
        named = ", ".join(f"{fmt.name} ({family.name})" for family, fmt in claims)
        raise ConversionError(f"the keys match several layouts: {named}; pass --from explicitly")
    if claims:
        family, fmt = claims[0]
        return fmt.name, family.name
    if is_torchvision_resnet(state_dict) or is_hf_resnet(state_dict):
        return RESNET_SOURCE, "resnet"
    sample = ", ".join(list(state_dict)[:5])
    raise ConversionError(f"unrecognised checkpoint layout (first keys: {sample}); pass --from explicitly")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    source: Optional[str] = None,
    *,
    class_map: str = "auto",
    backbone_prefix: str = "backbone.",
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Convert a state dict to detrex_lite names with the registered families' formats.

    Args:
        state_dict: the source weights.
        source: one of :func:`source_formats`, or None to detect it from the keys.
        class_map: "auto", "coco" or "none" (see :mod:`detrex_lite.checkpoint.class_heads`).
        backbone_prefix: where a bare ResNet goes in the detector ("backbone.").

    Returns:
        (state dict, metadata) where metadata records "source" and "architecture" (the family
        name), and for a bare backbone "partial" = the prefix it covers (the rest of the detector
        stays initialised).
    """
    state_dict = strip_prefix(state_dict, "module.")
    if source is not None and source not in source_formats():
        raise ValueError(f"source must be one of {source_formats()}, got {source!r}")
    claims = [] if any(k.startswith("backbone.stem.") for k in state_dict) else _claims(state_dict)
    chosen = [(family, fmt) for family, fmt in claims if source is None or fmt.name == source]
    if len(chosen) != 1:
        detected, model = detect_source(state_dict)  # raises for no layout or several
        if source is not None and source != detected:
            raise ConversionError(f"--from {source} was given but the keys look like {detected} ({model})")
    if not chosen:  # a bare ResNet
        logger.info(f"converting a {RESNET_SOURCE} resnet checkpoint ({len(state_dict)} tensors)")
        out = add_prefix(convert_torchvision_resnet(state_dict), backbone_prefix)
        return out, {"source": RESNET_SOURCE, "architecture": "resnet", "partial": backbone_prefix}
    family, fmt = chosen[0]
    logger.info(f"converting a {fmt.name} {family.name} checkpoint ({len(state_dict)} tensors)")
    return fmt.convert(state_dict, class_map=class_map), {"source": fmt.name, "architecture": family.name}


def _family(name: str) -> Optional[WeightFamily]:
    return next((f for f in registered_weight_families() if f.name == name), None)


def _format(family: WeightFamily, source: str) -> Optional[WeightFormat]:
    return next((fmt for fmt in family.formats if fmt.name == source), None)


def converted_arch(
    state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, str], source_config: Mapping[str, Any]
) -> Dict[str, Any]:
    """The arch facts of weights :func:`convert_state_dict` converted (``meta`` is its metadata):
    what the source file states (``source_config``: the official ``args`` and/or HF
    ``config.json``, see :attr:`WeightFormat.stated_arch`), then what the tensors show, which
    wins where both tell, except for the family's ``inferred_only`` facts."""
    family = _family(meta["architecture"])
    if family is None:
        return {}
    fmt = _format(family, meta["source"])
    arch = fmt.stated_arch(source_config) if fmt is not None else {}
    tensors = family.state_dict_arch(state_dict)
    for field in family.inferred_only:
        if field in arch:
            tensors.pop(field, None)  # e.g. identical per-layer heads: also an untrained model
    arch.update(tensors)
    return arch


def describe_converted(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    """What converted weights are, in words (for choosing the config)."""
    family = _family(meta["architecture"])
    return family.describe(state_dict) if family is not None else "ResNet backbone"
