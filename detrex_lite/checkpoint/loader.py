"""One weight loader: ``load_weights(model, path, purpose=...)`` for every tool.

detectron2/fvcore's checkpointer skips parameters whose shape differs with a warning and goes on;
a typo'd config (wrong depth, d_model, number of levels) then "loads" and evaluates to garbage.
Here the checkpoint must fit the model exactly: every missing, unexpected or wrongly-shaped
parameter, a disagreement with the architecture stored in the checkpoint, or tied parameters
whose checkpoint values differ is one :class:`CheckpointMismatchError` naming the keys and the
config option that would explain them (``model.with_box_refine``, ...). The one tolerated
difference is the class count when training starts from a checkpoint (fine-tuning): the class
heads keep their initialisation and one message says so. In evaluation, prediction and export a
different class count is an error too.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import _IncompatibleKeys
from torch import nn

from .family import model_arch, weight_family_of
from .io import CheckpointError, read_checkpoint
from .mismatch import explain_mismatch, foreign_format_hint, options_for_keys, tied_reasons
from .rename import strip_prefix
from detrex_lite.errors import CheckpointMismatchError  # noqa: F401  (re-exported)

__all__ = [
    "PURPOSES", "CheckpointMismatchError", "LoadReport", "load_weights", "apply_state_dict",
    "load_model_state", "load_checkpoint", "DetrexCheckpointer", "ema_requested",
]

logger = logging.getLogger(__name__)

PURPOSES = ("train", "resume", "eval", "predict", "export")

_LIST_LIMIT = 6


@dataclass
class LoadReport:
    """What :func:`load_weights` did."""

    path: str = ""
    missing: List[str] = field(default_factory=list)  # in the model, not in the checkpoint (partial files)
    unexpected: List[str] = field(default_factory=list)  # always empty after a successful load
    skipped_class_heads: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    ema: bool = False  # the EMA weights of the checkpoint were loaded
    meta: Dict[str, Any] = field(default_factory=dict)  # checkpoint["meta"] (run metadata), if any
    warnings: List[str] = field(default_factory=list)


def _inline(items: List[str], limit: int = _LIST_LIMIT) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def ema_requested(cfg: Any) -> bool:
    """Whether a config asks for the EMA weights outside training
    (``train.model_ema.enabled`` and ``train.model_ema.use_ema_weights_for_eval_only``)."""
    if cfg is None:
        return False
    try:
        ema = cfg.train.get("model_ema", {}) if "train" in cfg else {}
    except Exception:
        return False
    return bool(ema.get("enabled", False) and ema.get("use_ema_weights_for_eval_only", False))


def _class_count(shape: tuple, model: nn.Module, model_shape: tuple) -> int:
    """Classes of a class-head tensor, without DETR's no-object row."""
    extra = model_shape[0] - getattr(model, "num_classes", model_shape[0])
    return shape[0] - max(extra, 0)


def apply_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    purpose: str,
    meta: Optional[Mapping[str, Any]] = None,
    partial_prefix: Optional[str] = None,
    source: str = "the checkpoint",
) -> LoadReport:
    """Check ``state_dict`` against ``model`` and copy it in (see the module docstring).

    Args:
        purpose: "train" (fine-tuning: another class count re-initialises the class heads),
            "resume", "eval", "predict" or "export" (strict, class count included).
        meta: the checkpoint's metadata ({"arch": {...}, ...}) when it has some.
        partial_prefix: the checkpoint only covers parameters under this prefix (a converted
            ImageNet backbone, "backbone."); only allowed when training.
        source: how messages name the checkpoint (its path).

    Raises:
        CheckpointMismatchError: one line naming the offending keys and the config option.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    fine_tuning = purpose == "train"
    state_dict = strip_prefix(state_dict, "module.")
    family = weight_family_of(model)  # what the model's family knows about its weights
    class_head = re.compile(family.class_head_pattern) if family.class_head_pattern else None
    own = model.state_dict()
    report = LoadReport(path=source, meta=dict(meta or {}))
    wrong_shapes, class_heads, to_load = [], [], {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        ckpt_shape, model_shape = tuple(value.shape), tuple(own[key].shape)
        if ckpt_shape == model_shape:
            to_load[key] = value
        elif class_head is not None and class_head.fullmatch(key) and ckpt_shape[1:] == model_shape[1:]:
            class_heads.append((key, ckpt_shape, model_shape))
        else:
            wrong_shapes.append((key, ckpt_shape, model_shape))
    report.missing = [k for k in own if k not in state_dict]
    if partial_prefix and not fine_tuning:
        raise CheckpointMismatchError(
            f"{source}: holds only '{partial_prefix}*' weights (an ImageNet backbone): it can start "
            f"a training (train.init_checkpoint), not {purpose} a detector"
        )
    missing = [k for k in report.missing if not (partial_prefix and not k.startswith(partial_prefix))]

    # Architecture: the stored facts (or, without metadata, the ones the tensors tell), compared
    # and explained by the model's family.
    model_facts = model_arch(model)
    stored = dict((meta or {}).get("arch") or {})
    options = family.arch_options
    reasons = []
    # Weights of another family (stored facts name another meta-architecture): say that first;
    # comparing its facts field by field would name options that do not explain anything.
    foreign = stored.get("meta_architecture") not in (None, model_facts.get("meta_architecture"))
    if foreign:
        hint = foreign_format_hint(state_dict, model, stored)
        if hint:
            reasons.append(hint)
    elif stored:
        reasons += explain_mismatch(options, model_facts, stored, stored=True)
    tensor_facts = {} if partial_prefix or foreign else family.state_dict_arch(state_dict)
    if (
        not partial_prefix and not foreign and not stored.get("meta_architecture")
        and (missing or report.unexpected or wrong_shapes)
        and tensor_facts.get("meta_architecture") != model_facts.get("meta_architecture")
    ):
        # The model's family does not recognise these tensors: when another family (or a released
        # format) does, say that alone; the model's options would explain nothing.
        hint = foreign_format_hint(state_dict, model, stored)
        if hint:
            reasons.append(hint)
            foreign = True
    if not partial_prefix and not foreign:
        fields = [f for f in options if f != "num_classes" and f not in family.inferred_only and f not in stored]
        reasons += explain_mismatch(options, model_facts, tensor_facts, stored=False, fields=fields)
        reasons += tied_reasons(model, state_dict, family, stored)
        for doubt in family.warnings(model_facts, tensor_facts, stored):
            report.warnings.append(doubt)
            logger.warning(f"{source}: {doubt}")
    if (missing or report.unexpected or wrong_shapes) and not reasons:
        hint = foreign_format_hint(state_dict, model, stored) if report.unexpected else ""
        if hint:
            reasons.append(hint)
        else:
            pointed = options_for_keys(family, missing, report.unexpected)
            if pointed:
                reasons.append(f"check {', '.join(pointed)}")

    problems = []
    if wrong_shapes:
        problems.append(
            f"{len(wrong_shapes)} shape mismatch(es): "
            + _inline([f"{k}: {c} in the checkpoint, {m} in the model" for k, c, m in wrong_shapes], 3)
        )
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} key(s) the model does not have: {_inline(report.unexpected)}")
    if missing:
        problems.append(f"{len(missing)} model key(s) missing from the checkpoint: {_inline(missing)}")
    if class_heads and not fine_tuning:
        key, ckpt_shape, model_shape = class_heads[0]
        n = _class_count(ckpt_shape, model, model_shape)
        reasons.append(
            f"the checkpoint has {n} classes, the config {getattr(model, 'num_classes', model_shape[0])} "
            f"(set model.num_classes={n}; a different class count is only accepted when training "
            "starts from a checkpoint, which re-initialises the class heads)"
        )
    if reasons or problems:
        message = f"{source} does not fit the model ({purpose}): " + "; ".join(reasons + problems)
        details = "\n".join(
            [f"  shape {k}: {c} in the checkpoint, {m} in the model" for k, c, m in wrong_shapes]
            + [f"  unexpected {k}" for k in report.unexpected]
            + [f"  missing {k}" for k in missing]
        )
        raise CheckpointMismatchError(message, details)

    unusable = unusable_values(to_load, own)
    if unusable:
        raise CheckpointError(f"{source}: {unusable}; nothing was loaded")
    model.load_state_dict(to_load, strict=False)
    if class_heads:
        report.skipped_class_heads = class_heads
        _, ckpt_shape, model_shape = class_heads[0]
        logger.warning(
            f"The checkpoint's class heads have {ckpt_shape[0]} outputs, the model's {model_shape[0]} "
            f"(a different class count, e.g. fine-tuning on a new dataset): loaded everything "
            f"except the class heads, which keep their initialisation: {_inline([k for k, _, _ in class_heads])}"
        )
    if report.missing:
        logger.info(
            f"{len(report.missing)} model key(s) not in the checkpoint keep their initialisation "
            f"(it only covers '{partial_prefix}*')"
        )
    return report


def unusable_values(state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    """Why tensors of ``state_dict`` cannot be weights of a model whose state dict is ``own``
    (same keys and shapes): NaN or infinite values (a diverged or damaged file), or integer
    tensors where the model has floating-point ones (a file no trainer writes). "" when usable."""
    integer = [k for k, v in state_dict.items() if own[k].is_floating_point() and not (v.is_floating_point() or v.is_complex())]
    floating = [(k, v) for k, v in state_dict.items() if v.is_floating_point() and v.numel()]
    flags = torch.stack([torch.isfinite(v).all().cpu() for _, v in floating]).tolist() if floating else []
    non_finite = [k for (k, _), ok in zip(floating, flags) if not ok]
    reasons = []
    if non_finite:
        reasons.append(
            f"{len(non_finite)} tensor(s) hold NaN or infinite values: {_inline(non_finite)} (damaged weights, "
            "e.g. from a diverged run: use an earlier checkpoint)"
        )
    if integer:
        reasons.append(
            f"{len(integer)} tensor(s) are integers where the model has floating-point weights: {_inline(integer)}"
        )
    return "; ".join(reasons)


def load_weights(model: nn.Module, path: str, *, purpose: str, cfg: Any = None) -> LoadReport:
    """Load the weights at ``path`` into ``model`` for ``purpose``.

    Args:
        model: the detector built from the config (on any device).
        path: a checkpoint written by training or tools/convert_checkpoint.py (or a bare state
            dict); URLs and detectron2:// paths are fetched with detectron2's PathManager.
        purpose: "train" (train.init_checkpoint: a different class count re-initialises the class
            heads, ImageNet backbone files are accepted), "eval", "predict" or "export" (strict).
        cfg: the config; its ``train.model_ema`` decides whether the EMA weights are loaded
            (without a config, the checkpoint's metadata decides).

    Returns:
        a :class:`LoadReport` (``meta`` holds the run metadata stored with the checkpoint).

    Raises:
        CheckpointFileError: the file cannot be read as a checkpoint (one line).
        CheckpointMismatchError: it does not fit the model (one line naming the config option).
    """
    if purpose == "resume":
        raise ValueError("resume through the trainer's checkpointer (DetrexCheckpointer)")
    local = path
    if not os.path.isfile(path) and "://" in path:
        from detectron2.utils.file_io import PathManager

        local = PathManager.get_local_path(path)
    checkpoint = read_checkpoint(local)
    meta = dict(checkpoint.get("meta") or {})
    use_ema = ema_requested(cfg) if cfg is not None else bool(meta.get("use_ema_weights", False))
    if purpose == "train":
        use_ema = False  # fine-tuning starts from the trained weights
    state_dict = checkpoint["model"]
    if use_ema:
        ema = checkpoint.get("model_ema")
        if not isinstance(ema, dict) or not isinstance(ema.get("shadow"), dict):
            raise CheckpointMismatchError(
                f"{path}: train.model_ema.use_ema_weights_for_eval_only is set but the file holds no EMA "
                "weights (it was not trained with train.model_ema.enabled=True); set "
                "train.model_ema.use_ema_weights_for_eval_only=False"
            )
        state_dict = ema["shadow"]
    report = apply_state_dict(
        model, state_dict, purpose=purpose, meta=meta, partial_prefix=checkpoint.get("partial"), source=path
    )
    report.ema = use_ema
    logger.info(
        f"Loaded {'the EMA weights of ' if use_ema else ''}{path} for {purpose}"
        + (f" ({checkpoint['source']} weights)" if "source" in checkpoint else "")
    )
    return report


# ------------------------------------------------------------------ earlier entry points
def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    partial_prefix: Optional[str] = None,
) -> LoadReport:
    """Copy a state dict into ``model`` as training does (another class count skips the class
    heads); ``strict=False`` tolerates missing keys."""
    if not strict:  # the keys the state dict lacks keep the model's values
        own = model.state_dict()
        state_dict = {**{k: v for k, v in own.items() if k not in state_dict}, **state_dict}
    return apply_state_dict(model, state_dict, purpose="train", partial_prefix=partial_prefix)


def load_checkpoint(model: nn.Module, path: str) -> LoadReport:
    """Load a detrex_lite checkpoint into ``model`` as training does (``load_weights(...,
    purpose="train")``)."""
    return load_weights(model, path, purpose="train")


class DetrexCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose model loading goes through :func:`apply_state_dict`:
    ``train.init_checkpoint`` loads with purpose "train" (another class count re-initialises the
    class heads, ImageNet backbone files are accepted), a resume (loading every checkpointable)
    with purpose "resume" (strict). Files are read with :func:`read_checkpoint` (one-line errors);
    detectron2 ``.pkl`` model-zoo files keep detectron2's name-matching heuristics.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._purpose = "train"
        self._source = "the checkpoint"  # the file being loaded, for the messages

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        # fvcore: checkpointables=None loads every checkpointable, i.e. a resume
        self._purpose = "resume" if checkpointables is None and self.checkpointables else "train"
        self._source = path or "the checkpoint"
        return super().load(path, checkpointables=checkpointables)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return read_checkpoint(f)

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        heuristics = bool(checkpoint.get("matching_heuristics", False))
        state_dict = checkpoint.pop("model")
        partial = checkpoint.get("partial")
        if heuristics:
            self._convert_ndarray_to_tensor(state_dict)
            state_dict = align_and_update_state_dicts(
                self.model.state_dict(), state_dict, c2_conversion=checkpoint.get("__author__") == "Caffe2"
            )
        if heuristics or not self.strict:
            # detectron2's name matching covers what it covers (an ImageNet backbone): the rest
            # keeps its initialisation
            own = self.model.state_dict()
            state_dict = {**{k: v for k, v in own.items() if k not in state_dict}, **state_dict}
        apply_state_dict(
            self.model, state_dict, purpose=self._purpose, meta=checkpoint.get("meta"), partial_prefix=partial,
            source=self._source,
        )
        # apply_state_dict already reported what it did; fvcore would list it again
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])
