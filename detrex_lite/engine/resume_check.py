"""``--resume`` continues the run that is in the folder, not another one.

A run resumed with its ``.py`` config but without the first run's overrides would silently
continue toward the config's schedule, with the config's learning rate, and overwrite the run's
``config.yaml``. So before resuming, the config (after this command line's overrides) is compared
with the run's saved ``config.yaml``, key by key, both as written by ``LazyConfig.save``
(interpolations unresolved, so ``optimizer.lr=1e-5`` changes one key, not the keys that refer
to it). Keys this command line sets are intended changes (logged); any other difference stops
the run with the keys and two commands that work as printed, unless ``--resume-changed`` is given.
"""
import os
import shlex
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from detrex_lite.errors import ConfigError

__all__ = [
    "ConfigChange", "check_resume_config", "config_changes", "describe_changes", "override_keys", "set_on_command_line",
    "train_net_command",
]

# (dotted key, value in the run's config.yaml, value now); "(absent)" where a side has no such key
ConfigChange = Tuple[str, Any, Any]
ABSENT = "(absent)"
_SHOWN = 8


def _flatten(node: Any, prefix: str, out: Dict[str, Any]) -> Dict[str, Any]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(node, list) and node:
        for i, value in enumerate(node):
            _flatten(value, f"{prefix}.{i}" if prefix else str(i), out)
    else:
        out[prefix] = node
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, or the same number written two ways (1 and 1.0, 0.001 and "1e-3")."""
    if a == b:
        return True
    try:
        return not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _saved_form(cfg: Any) -> Dict[str, Any]:
    """``cfg`` as ``LazyConfig.save`` writes it (callables as dotted names), read back."""
    from detectron2.config import LazyConfig

    with tempfile.TemporaryDirectory(prefix="detrex_resume_check_") as folder:
        path = os.path.join(folder, "config.yaml")
        LazyConfig.save(cfg, path)
        with open(path) as f:
            return yaml.safe_load(f) or {}


def config_changes(saved_path: str, cfg: Any) -> List[ConfigChange]:
    """The keys in which ``cfg`` differs from the config saved at ``saved_path``, in file order.

    Raises:
        ConfigError: ``saved_path`` cannot be read, or is not a saved config (not UTF-8, not
            valid YAML, empty, not a mapping: :func:`detrex_lite.config.yaml_file.read_yaml_config`).
    """
    from omegaconf import OmegaConf

    from detrex_lite.config.yaml_file import read_yaml_config

    try:
        saved = OmegaConf.to_container(read_yaml_config(saved_path), resolve=False)
    except OSError as e:
        raise ConfigError(f"{saved_path}: cannot be read to compare the resumed config with it ({e})") from None
    before, now = _flatten(saved, "", {}), _flatten(_saved_form(cfg), "", {})
    changes = []
    for key in list(before) + [k for k in now if k not in before]:
        old, new = before.get(key, ABSENT), now.get(key, ABSENT)
        if not (key in before and key in now and _same(old, new)):
            changes.append((key, old, new))
    return changes


def override_keys(overrides: Sequence[str]) -> List[str]:
    """The dotted keys ``key=value`` overrides set (``+key`` as ``key``)."""
    return [o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o]


def set_on_command_line(key: str, keys: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``keys`` or lies under one (``model.backbone`` covers
    ``model.backbone.depth``)."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def _describe(changes: Sequence[ConfigChange]) -> str:
    shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes[:_SHOWN])
    return shown + (f", ... ({len(changes)} keys in all)" if len(changes) > _SHOWN else "")


def train_net_command() -> str:
    """How this tool was started, for the commands printed: ``python <the script as typed>``."""
    script = sys.argv[0] if sys.argv and os.path.basename(sys.argv[0]) == "train_net.py" else "tools/train_net.py"
    return f"python {script}"


def _with_run_config(argv: Optional[Sequence[str]], run_dir: str, overrides: Sequence[str],
                     trust_config: bool) -> List[str]:
    """This command line (its other flags kept, e.g. --num-gpus) with the run's own config:
    ``--run DIR`` instead of ``--config-file`` and ``train.output_dir=``."""
    if argv is None:
        kept = [o for o in overrides if not o.lstrip("+").startswith("train.output_dir=")]
        return ["--resume"] + (["--trust-config"] if trust_config else []) + ["--run", run_dir] + kept
    words: List[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--config-file", "--run"):
            skip = True
        elif not word.startswith(("--config-file=", "--run=", "train.output_dir=", "+train.output_dir=")):
            words.append(word)
    at = words.index("--resume") + 1 if "--resume" in words else 0
    return words[:at] + ["--run", run_dir] + words[at:]


def check_resume_config(
    cfg: Any,
    saved_path: str,
    overrides: Sequence[str],
    *,
    allow_changed: bool,
    argv: Optional[Sequence[str]],
    trust_config: bool = False,
) -> Tuple[List[ConfigChange], List[ConfigChange]]:
    """Compare the config to resume with the run's ``config.yaml``.

    Args:
        overrides: this command line's ``key=value`` overrides (and those --run implies).
        allow_changed: ``--resume-changed``: differences in keys not set here are accepted.
        argv: this command line (for the commands printed), None when not known.

    Returns:
        (changes set on the command line, other changes accepted with ``allow_changed``).

    Raises:
        ConfigError: keys not set on the command line differ and ``allow_changed`` is False; the
            message lists them and says how to continue the run as it was, or with the changes.
    """
    keys = override_keys(overrides)
    changes = config_changes(saved_path, cfg)
    explicit = [c for c in changes if set_on_command_line(c[0], keys)]
    other = [c for c in changes if not set_on_command_line(c[0], keys)]
    if other and not allow_changed:
        run_dir = os.path.dirname(saved_path) or "."
        as_it_was = _with_run_config(argv, run_dir, overrides, trust_config)
        words = list(argv) if argv is not None else []
        at = words.index("--resume") + 1 if "--resume" in words else 0
        with_changes = words[:at] + ["--resume-changed"] + words[at:] if words else ["--resume", "--resume-changed", "..."]
        raise ConfigError(
            f"--resume: the config differs from the run's {saved_path} in keys this command line does not set: "
            f"{_describe(other)} (the first run's overrides left out?); continue the run as it was with "
            f"'{train_net_command()} {shlex.join(as_it_was)}', or with these changes with '{train_net_command()} {shlex.join(with_changes)}'"
        )
    return explicit, other


def describe_changes(changes: Sequence[ConfigChange]) -> str:
    """``key: old -> new, ...`` (the first few), for the log."""
    return _describe(changes)
