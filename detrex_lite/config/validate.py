"""Checks run by tools/train_net.py before any model is built, so that a wrong config fails in
one line instead of after minutes of start-up or deep in a traceback.

Every check raises `ConfigError`; train_net prints its message and exits with code 2.
"""
import difflib
import math
import os
from typing import Any, List, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig
from detrex_lite.errors import ConfigError  # noqa: F401  (re-exported)


_MISSING = object()
_REQUIRED_TOP_LEVEL = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
_AMP_DTYPES = ("float16", "bfloat16")


def load_config_file(path: str, *, trust: bool = False):
    """`LazyConfig.load(path)` with a one-line error for a missing file.

    A YAML config (a run folder's ``config.yaml``) is read as plain YAML
    (:func:`~detrex_lite.config.yaml_file.read_yaml_config`: no Python tags; one line for a file
    that is not UTF-8, not YAML, empty or not a mapping), may only name the callables of
    :mod:`detrex_lite.config.trust`'s allow-list unless ``trust`` is True, and every
    ``_target_`` must exist: all checked before anything is built from it, each a ConfigError
    naming the file (and the key). A ``.py`` config is code its user chose to run.
    """
    if not path:
        raise ConfigError("no config file given (use --config-file path/to/config.py)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if not path.endswith((".yaml", ".yml")):
        return LazyConfig.load(path)
    from .trust import check_config_targets, check_targets_exist
    from .yaml_file import read_yaml_config

    cfg = read_yaml_config(path, trust=trust)
    if not trust:
        check_config_targets(cfg, path)
    check_targets_exist(cfg, path)
    return cfg


def _is_interpolation(value) -> bool:
    return isinstance(value, str) and "${" in value


def _child_keys(node) -> List[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    if isinstance(node, ListConfig):
        return [str(i) for i in range(len(node))]
    return []


def _lookup_raw(cfg, key: str) -> Tuple[Any, str, List[str]]:
    """Walk `key` ("a.b.c") in cfg without resolving interpolations.

    Returns (raw value or _MISSING, the longest existing prefix, the keys available after that
    prefix).
    """
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if isinstance(node, DictConfig):
            if part not in node.keys():
                return _MISSING, prefix, _child_keys(node)
            node = _raw_child(node, part)
        elif isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return _MISSING, prefix, _child_keys(node)
            node = _raw_child(node, int(part))
        else:
            return _MISSING, prefix, []
    return node, key, []


def _raw_child(node, key):
    """The child ``key`` of a DictConfig / ListConfig as written, with public OmegaConf calls: a
    container node, or an interpolation ("${..x}") / missing ("???") value as its raw string."""
    if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
        return OmegaConf.to_container(node, resolve=False)[key]
    return node[key]


def _type_name(value) -> str:
    if isinstance(value, (DictConfig, dict)):
        return "dict"
    if isinstance(value, (ListConfig, list, tuple)):
        return "list"
    return type(value).__name__


def _compatible(old, new) -> bool:
    if old is None or new is None or _is_interpolation(old) or _is_interpolation(new):
        return True
    if isinstance(old, DictConfig) and "_target_" in old:
        return True  # a LazyCall may be replaced by a literal (e.g. model.num_classes=80)
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int) and not isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    if isinstance(old, str):
        return isinstance(new, str)
    if isinstance(old, (ListConfig, list, tuple)):
        return isinstance(new, (list, tuple, ListConfig))
    if isinstance(old, (DictConfig, dict)):
        return isinstance(new, (dict, DictConfig))
    return True


def _parse_override(item: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([item])
    except Exception as e:  # hydra's parse errors are multi-line; keep the first line
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot parse override '{item}': {first_line}") from None
    return override.value()


def apply_overrides_checked(cfg, overrides: Sequence[str]):
    """Apply "key=value" overrides like `LazyConfig.apply_overrides`, refusing unknown keys and
    values whose type differs from the current one.

    LazyConfig.apply_overrides silently creates a new key for a typo (`train.max_itr=10`), so the
    key must exist; write `+key=value` to add a key on purpose (e.g. a constructor argument the
    config does not set).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value_text = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        old, prefix, siblings = _lookup_raw(cfg, key)
        new = _parse_override(f"{key}={value_text}")
        if old is _MISSING and not add:
            missing = key[len(prefix) + 1 :] if prefix else key
            first_missing = missing.split(".")[0]
            close = difflib.get_close_matches(first_missing, siblings, n=1, cutoff=0.6)
            if close:
                suggestion = f"{prefix + '.' if prefix else ''}{close[0]}"
                hint = f"did you mean '{suggestion}'?"
            else:
                where = f"'{prefix}'" if prefix else "the config"
                hint = "keys of {}: {}".format(where, ", ".join(siblings) or "none")
            raise ConfigError(
                f"unknown config key '{key}' ({hint}); write '+{key}={value_text}' to add a new key"
            )
        if old is not _MISSING and not _compatible(old, new):
            shown_old = old if not isinstance(old, (DictConfig, ListConfig)) else OmegaConf.to_container(old)
            raise ConfigError(
                f"override {key}={value_text}: expected {_type_name(old)} (current value "
                f"{shown_old!r}), got {_type_name(new)} {new!r}"
            )
        LazyConfig.apply_overrides(cfg, [f"{key}={value_text}"])
    return cfg


def check_structure(cfg) -> None:
    """The top-level keys train_net needs, and the values it interprets itself."""
    missing = [k for k in _REQUIRED_TOP_LEVEL if k not in cfg]
    if missing:
        raise ConfigError(
            "config is missing top-level key(s) {} (it has: {})".format(
                ", ".join(missing), ", ".join(str(k) for k in cfg.keys())
            )
        )
    train = cfg.train
    amp = train.get("amp", None)
    if amp is not None and amp.get("enabled", False) and amp.get("dtype", "float16") not in _AMP_DTYPES:
        raise ConfigError(f"train.amp.dtype={amp.dtype!r}: expected one of {', '.join(_AMP_DTYPES)}")
    max_iter = train.get("max_iter", None)
    if not isinstance(max_iter, int) or max_iter <= 0:
        raise ConfigError(f"train.max_iter={max_iter!r}: expected a positive int")
    for key, ok, expected in _CHECKED_VALUES:
        value = _resolved(cfg, key)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key}={value!r}: expected {expected}")
    output_dir = train.get("output_dir", None)
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"train.output_dir={output_dir!r} is a file, not a folder")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# (key, check, what is expected): the values train_net interprets itself, checked before anything
# is built (a 0 or a NaN here used to surface as a traceback deep in detectron2 or torch).
_CHECKED_VALUES = (
    ("train.output_dir", lambda v: isinstance(v, str) and v.strip() != "", "a folder path (not empty)"),
    ("train.log_period", _positive_int, "a positive int"),
    ("train.checkpointer.max_to_keep", lambda v: v is None or _positive_int(v), "a positive int or None (keep all)"),
    ("train.best_checkpoint.mode", lambda v: v in ("max", "min"), "'max' or 'min'"),
    ("dataloader.train.total_batch_size", _positive_int, "a positive int"),
    ("optimizer.lr", _positive_number, "a positive finite number"),
)


def _resolved(cfg, key: str):
    """The value at ``key`` with interpolations resolved; _MISSING when absent or unresolvable."""
    try:
        value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False)
    except Exception:
        return _MISSING
    return _MISSING if value is None and key != "train.checkpointer.max_to_keep" else value


def _literal_int(cfg, key: str):
    value, _, _ = _lookup_raw(cfg, key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def check_num_classes(cfg, eval_only: bool = False) -> None:
    """A literal `model.num_classes` (or `model.criterion.num_classes`) must match the number of
    thing_classes of the dataset the config trains (or, with eval_only, tests) on."""
    from detrex_lite.data.classes import num_classes_from_dataset

    split = "test" if eval_only else "train"
    names_key = f"dataloader.{split}.dataset.names"
    try:
        names = OmegaConf.select(cfg, names_key, default=None)
    except Exception:
        names = None
    if names is None:
        return
    names = [names] if isinstance(names, str) else list(names)
    for key in ("model.num_classes", "model.criterion.num_classes"):
        literal = _literal_int(cfg, key)
        if literal is None:
            continue
        try:
            expected = num_classes_from_dataset(names)
        except (KeyError, ValueError) as e:
            raise ConfigError(str(e).strip("'\"")) from None
        if literal != expected:
            raise ConfigError(
                f"{key}={literal} but dataset {', '.join(names)} has {expected} thing_classes "
                f"({names_key}); set {key}={expected} or use "
                "L(num_classes_from_dataset)(names=...)"
            )


def check_init_checkpoint(path: str) -> None:
    """`train.init_checkpoint` must be empty, an existing file, or a URL / detectron2:// path
    that can be fetched (it is downloaded into detectron2's cache here, before any model is
    built, so an offline machine fails in one line instead of deep in the checkpointer)."""
    if not path:
        return
    if "://" in path:
        from detectron2.utils.file_io import PathManager

        try:
            local = PathManager.get_local_path(path)
        except Exception as err:  # urllib/iopath raise many types; the message is what matters
            raise ConfigError(
                f"train.init_checkpoint: cannot read {path} ({type(err).__name__}: {err}). "
                "Offline, pass a local file instead; for ImageNet backbones convert a torchvision "
                "ResNet state dict with tools/convert_checkpoint.py --from torchvision-resnet"
            ) from None
        if not os.path.isfile(local):
            raise ConfigError(f"train.init_checkpoint: {path} resolved to {local}, which is not a file")
        return
    if not os.path.isfile(path):
        raise ConfigError(f"train.init_checkpoint: file not found: {path}")
