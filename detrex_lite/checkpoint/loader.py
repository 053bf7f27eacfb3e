"""Loading weights into a model, with every mismatch named.

detectron2/fvcore's checkpointer skips parameters whose shape differs with a warning and goes on;
a typo'd config (wrong depth, d_model, number of levels) then "loads" and evaluates to garbage.
Here a shape mismatch is an error that lists each parameter and both shapes, with one exception:
the class heads, whose size differs exactly when a checkpoint trained on one dataset is
fine-tuned on another. Those keep their initialisation and one message says so.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import nn

from .io import _torch_load
from .rename import format_key_list, strip_prefix

__all__ = ["CheckpointMismatchError", "LoadReport", "load_model_state", "load_checkpoint", "DetrexCheckpointer"]

logger = logging.getLogger(__name__)

# Class heads of DETR-family models: their first dimension is the number of classes.
CLASS_HEAD_RE = re.compile(r"(?:.*\.)?class_embed(?:\.\d+)?\.(?:weight|bias)")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model (names or shapes)."""


@dataclass
class LoadReport:
    missing: List[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: List[str] = field(default_factory=list)  # in the checkpoint, not in the model
    skipped_class_heads: List[Tuple[str, tuple, tuple]] = field(default_factory=list)


def _foreign_format_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    from .convert import detect_source  # local: convert imports the converters

    try:
        source, model = detect_source(state_dict)
    except Exception:
        return ""
    return (
        f"\nThese look like {source} ({model}) weights: convert them first with\n"
        f"  python tools/convert_checkpoint.py --from {source} IN OUT"
    )


def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    partial_prefix: Optional[str] = None,
) -> LoadReport:
    """Copy ``state_dict`` into ``model``.

    Args:
        strict: raise on missing keys. Unexpected keys and shape mismatches (other than the
            class heads) always raise.
        partial_prefix: the checkpoint only covers parameters under this prefix (e.g. "backbone."
            for ImageNet weights): the other missing keys are expected and only logged.

    Raises:
        CheckpointMismatchError: naming every offending key (and both shapes).
    """
    state_dict = strip_prefix(state_dict, "module.")
    own = model.state_dict()
    report = LoadReport()
    wrong_shapes = []
    to_load = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        ckpt_shape, model_shape = tuple(value.shape), tuple(own[key].shape)
        if ckpt_shape == model_shape:
            to_load[key] = value
        elif CLASS_HEAD_RE.fullmatch(key) and ckpt_shape[1:] == model_shape[1:]:
            report.skipped_class_heads.append((key, ckpt_shape, model_shape))
        else:
            wrong_shapes.append(f"{key}: {ckpt_shape} in the checkpoint, {model_shape} in the model")
    report.missing = [k for k in own if k not in state_dict]

    problems = []
    if wrong_shapes:
        problems.append(f"{len(wrong_shapes)} shape mismatch(es):\n{format_key_list(wrong_shapes)}")
    if report.unexpected:
        problems.append(
            f"{len(report.unexpected)} key(s) in the checkpoint that the model does not have:\n"
            f"{format_key_list(report.unexpected)}"
        )
    missing_outside = [k for k in report.missing if not (partial_prefix and not k.startswith(partial_prefix))]
    if strict and missing_outside:
        problems.append(
            f"{len(missing_outside)} model key(s) missing from the checkpoint:\n{format_key_list(missing_outside)}"
        )
    if problems:
        hint = _foreign_format_hint(state_dict) if report.unexpected else ""
        raise CheckpointMismatchError("checkpoint does not fit the model: " + "\n".join(problems) + hint)

    model.load_state_dict(to_load, strict=False)
    if report.skipped_class_heads:
        key, ckpt_shape, model_shape = report.skipped_class_heads[0]
        names = ", ".join(k for k, _, _ in report.skipped_class_heads)
        logger.warning(
            f"The checkpoint's class heads have {ckpt_shape[0]} outputs, the model's {model_shape[0]} "
            f"(a different class count, e.g. fine-tuning on a new dataset): loaded everything "
            f"except the class heads, which keep their initialisation: {names}"
        )
    if report.missing:
        level = logging.INFO if partial_prefix and not missing_outside else logging.WARNING
        logger.log(
            level,
            f"{len(report.missing)} model key(s) not in the checkpoint keep their initialisation"
            + (f" (it only covers '{partial_prefix}*')" if partial_prefix else "")
            + f":\n{format_key_list(report.missing, 10)}",
        )
    return report


def load_checkpoint(model: nn.Module, path: str, *, strict: bool = True) -> LoadReport:
    """Load a detrex_lite checkpoint (e.g. written by tools/convert_checkpoint.py) into ``model``."""
    loaded = _torch_load(path)
    meta: Dict[str, Any] = {}
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        meta = {k: v for k, v in loaded.items() if k != "model"}
        loaded = loaded["model"]
    logger.info(f"loading {path} ({meta.get('source', 'detrex_lite')} weights)")
    return load_model_state(model, loaded, strict=strict, partial_prefix=meta.get("partial"))


class DetrexCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose model loading goes through :func:`load_model_state`:
    shape mismatches raise with names and shapes, a different class count skips only the class
    heads (one message), and missing keys raise unless the file says it is partial (converted
    ImageNet backbones) or uses detectron2's name-matching heuristics (``.pkl`` model zoo files).
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        heuristics = bool(checkpoint.get("matching_heuristics", False))
        state_dict = checkpoint.pop("model")
        if heuristics:
            self._convert_ndarray_to_tensor(state_dict)
            state_dict = align_and_update_state_dicts(
                self.model.state_dict(), state_dict, c2_conversion=checkpoint.get("__author__") == "Caffe2"
            )
        report = load_model_state(
            self.model, state_dict, strict=self.strict and not heuristics, partial_prefix=checkpoint.get("partial")
        )
        # load_model_state already logged what is missing; fvcore would list it again
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])
