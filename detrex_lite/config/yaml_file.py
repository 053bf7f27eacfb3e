"""Reading a saved ``config.yaml`` (a run folder's) into a LazyConfig, with one-line errors.

detectron2's ``LazyConfig.load`` reads YAML with ``yaml.unsafe_load``: a
``!!python/object/apply:os.system [...]`` tag in a run folder's ``config.yaml`` would run while
the file is read, before the ``_target_`` allow-list (:mod:`detrex_lite.config.trust`) is even
consulted. An untrusted file is therefore read with ``yaml.safe_load`` (plain mappings, lists,
strings and numbers: all that ``LazyConfig.save`` writes); only ``trust=True`` reads it as
detectron2 does. A file that is not UTF-8 text, not valid YAML, empty or not a mapping is one
line naming the file.
"""
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from detrex_lite.errors import ConfigError

__all__ = ["read_yaml_config"]


def _where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def read_yaml_config(path: str, *, trust: bool = False) -> DictConfig:
    """The LazyConfig stored in the YAML file ``path`` (nothing instantiated).

    Args:
        trust: read it as ``LazyConfig.load`` does (Python tags construct objects: runs code);
            default: plain YAML only.

    Raises:
        ConfigError: one line naming ``path``: not UTF-8 text, not valid YAML (with the line and
            column), a Python tag in an untrusted file, empty, or not a mapping of keys.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: is not a text file (byte {data[e.start]:#04x} at offset {e.start} is not UTF-8), not a saved "
            "config"
        ) from None
    try:
        loaded: Any = yaml.unsafe_load(text) if trust else yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        if not trust and "python/" in str(e.problem):
            raise ConfigError(
                f"{path}: holds a Python object tag{_where(e)} ({e.problem}), which would run code when read; "
                "a saved config holds plain values only. If you trust this file, pass --trust-config"
            ) from None
        raise ConfigError(f"{path}: is not a valid config: {e.problem}{_where(e)}") from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: is not valid YAML: {problem}{_where(e)}") from None
    if loaded is None:
        raise ConfigError(f"{path}: is empty; a saved config holds model, train, dataloader, ... (LazyConfig.save)")
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: holds {type(loaded).__name__} {str(loaded)[:40]!r}, not a config (a mapping of keys: model, "
            "train, dataloader, ...)"
        )
    # as LazyConfig.load builds it from the parsed YAML
    return OmegaConf.create(loaded, flags={"allow_objects": True})
