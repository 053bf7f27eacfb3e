"""Why a checkpoint does not fit a model, in words that name the config option to change.

A checkpoint and a model can disagree in ways the parameter names alone hide (two variants of a
family with the same keys and shapes). Two independent witnesses tell them apart:

* the architecture stored with the checkpoint (``checkpoint["meta"]["arch"]``, written by training
  and by tools/convert_checkpoint.py), compared with the model's;
* tied parameters: when several state-dict keys of the model are one tensor, the checkpoint's
  values for them must be equal.

What the facts are, which config option sets each, and what a tied group means is the model
family's knowledge (:class:`~detrex_lite.checkpoint.family.WeightFamily`); this module only
compares and phrases.
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .convert import detect_source
from .family import WeightFamily, import_families_beside, registered_weight_families

__all__ = ["explain_mismatch", "tied_groups", "tied_reasons", "options_for_keys", "foreign_format_hint"]

# The backbone is the library's (detrex_lite.modeling.build_resnet): its option is named here.
_BACKBONE_PREFIX, _BACKBONE_OPTION = "backbone.", "model.backbone.depth"


def _inline(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def explain_mismatch(
    arch_options: Mapping[str, str],
    model_facts: Mapping[str, Any],
    ckpt_facts: Mapping[str, Any],
    *,
    stored: bool,
    fields: Optional[Sequence[str]] = None,
) -> List[str]:
    """One phrase per arch fact on which checkpoint and model differ, naming the config option:
    "the checkpoint was trained with model.with_box_refine=True, the config has False".

    Args:
        arch_options: the model family's field -> config option table.
        stored: the checkpoint's facts come from its metadata (else: read from its tensors).
        fields: the facts to compare (default: every field of ``arch_options`` but num_classes,
            which the loader compares through the class heads).
    """
    if fields is None:
        fields = [f for f in arch_options if f != "num_classes"]
    source = "was trained with" if stored else "has"
    phrases = []
    for field in fields:
        if field in model_facts and field in ckpt_facts and model_facts[field] != ckpt_facts[field]:
            phrases.append(
                f"the checkpoint {source} {arch_options[field]}={ckpt_facts[field]}, "
                f"the config has {model_facts[field]}"
            )
    return phrases


def tied_groups(model: nn.Module) -> List[List[str]]:
    """Groups of state-dict keys of ``model`` that are one tensor (e.g. one head module repeated
    for every decoder layer)."""
    by_tensor: Dict[Tuple[int, int, tuple], List[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if value.numel() == 0:
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.stride()))
        by_tensor.setdefault(ident + (tuple(value.shape),), []).append(key)
    return [keys for keys in by_tensor.values() if len(keys) > 1]


def tied_reasons(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], family: WeightFamily, stored: Mapping[str, Any]
) -> List[str]:
    """Keys that are one tensor in the model must have equal values in the checkpoint; the family
    says what a differing group means (:meth:`WeightFamily.explain_tied`)."""
    reasons = []
    for keys in tied_groups(model):
        values = [state_dict[k] for k in keys if k in state_dict]
        if len(values) < 2 or all(v.shape == values[0].shape and torch.equal(v, values[0]) for v in values[1:]):
            continue
        reason = family.explain_tied(keys, stored)
        if reason is None:
            reason = f"{_inline(keys, 3)} are one tensor in the model but differ in the checkpoint"
        if reason and reason not in reasons:
            reasons.append(reason)
    return reasons


def options_for_keys(family: WeightFamily, missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
    """Config options that missing/unexpected key names point at: the family's, then the
    backbone's."""
    options = list(family.keys_point_at(missing, unexpected))
    if any(k.startswith(_BACKBONE_PREFIX) for k in list(missing) + list(unexpected)):
        options.append(_BACKBONE_OPTION)
    return options


def foreign_format_hint(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, stored: Optional[Mapping[str, Any]] = None
) -> str:
    """Why the names do not fit: released weights not converted yet (a registered family's format),
    or this project's weights of another model family (the stored arch facts say so, or a
    registered family reads them from the tensors); "" when nothing tells. The families beside the
    model's own are imported first (:func:`import_families_beside`): a run of one family has not
    imported the others."""
    import_families_beside(model)
    try:
        source, family = detect_source(state_dict)
    except Exception:
        built = type(model).__name__
        candidates = [(stored or {}).get("meta_architecture")]
        candidates += [family.state_dict_arch(state_dict).get("meta_architecture") for family in registered_weight_families()]
        for ours in candidates:
            if ours and ours != built:
                return f"these are detrex_lite {ours} weights and the config builds {built}: use a {ours} config"
        return ""
    return f"these look like {source} ({family}) weights: convert them first with tools/convert_checkpoint.py --from {source} IN OUT"
