"""What a checkpoint's architecture is, and which config option explains a mismatch.

A checkpoint and a model can disagree in ways the parameter names alone hide: the plain Deformable
DETR repeats ONE class/box head across its decoder layers (``nn.ModuleList([head] * n)``), so its
state dict has exactly the keys and shapes of the box-refinement model, whose heads are
independent. Two independent witnesses tell them apart:

* the architecture stored with the checkpoint (``checkpoint["meta"]["arch"]``, written by training
  and by tools/convert_checkpoint.py), compared with the model's;
* tied parameters: when several state-dict keys of the model are one tensor, the checkpoint's
  values for them must be equal.

Every mismatch is translated into the config option that would explain it
(``model.with_box_refine``, ``model.transformer.num_decoder_layers``, ...).
"""
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["ARCH_OPTIONS", "model_arch", "state_dict_arch", "tied_groups", "explain_mismatch", "keys_point_at"]

# arch field -> the config option that sets it (LazyConfig paths of the shipped configs)
ARCH_OPTIONS = {
    "with_box_refine": "model.with_box_refine",
    "as_two_stage": "model.as_two_stage",
    "num_feature_levels": "model.transformer.num_feature_levels",
    "num_encoder_layers": "model.transformer.num_encoder_layers",
    "num_decoder_layers": "model.transformer.num_decoder_layers",
    "num_queries": "model.num_queries",
    "d_model": "model.transformer.d_model",
    "num_classes": "model.num_classes",
}

_TWO_STAGE_RE = re.compile(r"transformer\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.")
_LAYER_RE = {
    "num_encoder_layers": re.compile(r"transformer\.encoder\.layers\.(\d+)\."),
    "num_decoder_layers": re.compile(r"transformer\.decoder\.layers\.(\d+)\."),
}
_LEVEL_KEY_RE = re.compile(r"neck\.input_proj\.(\d+)\.")
_HEAD_RE = re.compile(r"(class_embed|bbox_embed)\.(\d+)\.(.+)")


def model_arch(model: nn.Module) -> Dict[str, Any]:
    """The architecture facts of a DETR-family model that a checkpoint must share (None where the
    model has no such notion, e.g. box refinement for DETR)."""
    transformer = getattr(model, "transformer", None)

    def layers(name: str) -> Optional[int]:
        part = getattr(transformer, name, None)
        return len(part.layers) if part is not None and hasattr(part, "layers") else None

    arch = {
        "meta_architecture": type(model).__name__,
        "with_box_refine": getattr(model, "with_box_refine", None),
        "as_two_stage": getattr(model, "as_two_stage", None),
        "num_feature_levels": getattr(transformer, "num_feature_levels", None),
        "num_encoder_layers": layers("encoder"),
        "num_decoder_layers": layers("decoder"),
        "num_queries": getattr(model, "num_queries", None),
        "d_model": getattr(transformer, "d_model", None),
        "num_classes": getattr(model, "num_classes", None),
    }
    return {k: (v if not isinstance(v, torch.Tensor) else v.item()) for k, v in arch.items() if v is not None}


def _count(keys, pattern: re.Pattern) -> int:
    found = {int(m[1]) for m in map(pattern.match, keys) if m}
    return max(found) + 1 if found else 0


def _heads_identical(state_dict: Mapping[str, torch.Tensor]) -> Optional[bool]:
    """Whether every per-layer class/box head of a Deformable DETR state dict is the same
    tensor value as head 0 (None when there is only one head)."""
    by_suffix: Dict[Tuple[str, str], List[torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _HEAD_RE.fullmatch(key)
        if m:
            by_suffix.setdefault((m[1], m[3]), []).append(value)
    if not by_suffix or all(len(v) < 2 for v in by_suffix.values()):
        return None
    return all(
        all(v.shape == values[0].shape and torch.equal(v, values[0]) for v in values[1:])
        for values in by_suffix.values()
    )


def state_dict_arch(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Architecture facts readable from a detrex_lite state dict's names and shapes alone.

    Box refinement is inferred from the heads (independent per-layer heads that differ); a model
    saved right after initialisation cannot be told apart this way, which is why training and the
    converters also store ``meta["arch"]``.
    """
    keys = list(state_dict)
    arch: Dict[str, Any] = {}
    if "transformer.level_embed" in state_dict:
        arch["meta_architecture"] = "DeformableDETR"
        arch["num_feature_levels"] = int(state_dict["transformer.level_embed"].shape[0])
        arch["d_model"] = int(state_dict["transformer.level_embed"].shape[1])
        arch["as_two_stage"] = any(_TWO_STAGE_RE.match(k) for k in keys)
        identical = _heads_identical(state_dict)
        if identical is not None:
            arch["with_box_refine"] = not identical
        if "query_embed.weight" in state_dict:
            arch["num_queries"] = int(state_dict["query_embed.weight"].shape[0])
        if "class_embed.0.weight" in state_dict:
            arch["num_classes"] = int(state_dict["class_embed.0.weight"].shape[0])
    elif "class_embed.weight" in state_dict and "transformer.decoder.norm.weight" in state_dict:
        arch["meta_architecture"] = "DETR"
        arch["d_model"] = int(state_dict["class_embed.weight"].shape[1])
        arch["num_classes"] = int(state_dict["class_embed.weight"].shape[0]) - 1  # + no-object
        if "query_embed.weight" in state_dict:
            arch["num_queries"] = int(state_dict["query_embed.weight"].shape[0])
    for field, pattern in _LAYER_RE.items():
        count = _count(keys, pattern)
        if count:
            arch[field] = count
    return arch


def tied_groups(model: nn.Module) -> List[List[str]]:
    """Groups of state-dict keys of ``model`` that are one tensor (e.g. the shared head of the
    plain Deformable DETR, repeated for every decoder layer)."""
    by_tensor: Dict[Tuple[int, int, tuple], List[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if value.numel() == 0:
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.stride()))
        by_tensor.setdefault(ident + (tuple(value.shape),), []).append(key)
    return [keys for keys in by_tensor.values() if len(keys) > 1]


def _option(field: str, value: Any) -> str:
    return f"{ARCH_OPTIONS[field]}={value}"


def explain_mismatch(
    model_facts: Mapping[str, Any],
    ckpt_facts: Mapping[str, Any],
    *,
    stored: bool,
    fields: Optional[Sequence[str]] = None,
) -> List[str]:
    """One phrase per architecture fact on which checkpoint and model differ, naming the config
    option: "the checkpoint was trained with model.with_box_refine=True, the config has False".

    Args:
        stored: the checkpoint's facts come from its metadata (else: read from its tensors).
        fields: the facts to compare (default: all but num_classes, which the caller handles).
    """
    if fields is None:
        fields = [f for f in ARCH_OPTIONS if f != "num_classes"]
    source = "was trained with" if stored else "has"
    phrases = []
    for field in fields:
        if field in model_facts and field in ckpt_facts and model_facts[field] != ckpt_facts[field]:
            phrases.append(
                f"the checkpoint {source} {_option(field, ckpt_facts[field])}, "
                f"the config has {model_facts[field]}"
            )
    return phrases


def keys_point_at(missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
    """Config options that missing/unexpected key names point at, when the facts in the tensors
    could not be compared (e.g. a DETR model has no level embedding)."""
    hints = []
    if any(_TWO_STAGE_RE.match(k) for k in unexpected) or any(_TWO_STAGE_RE.match(k) for k in missing):
        hints.append(ARCH_OPTIONS["as_two_stage"])
    for field, pattern in _LAYER_RE.items():
        if any(pattern.match(k) for k in list(missing) + list(unexpected)):
            hints.append(ARCH_OPTIONS[field])
    if any(_LEVEL_KEY_RE.match(k) for k in list(missing) + list(unexpected)):
        hints.append(ARCH_OPTIONS["num_feature_levels"])
    if any(k.startswith("backbone.") for k in list(missing) + list(unexpected)):
        hints.append("model.backbone.depth")
    return hints
