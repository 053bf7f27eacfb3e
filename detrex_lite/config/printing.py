"""A LazyConfig fully resolved, and the keys in which two configs differ (``tools/print_config.py``).

The config (a .py config or a saved config.yaml) is loaded, the overrides are applied with the
same checks as train_net (an unknown key is an error that suggests the right one), and it is
shown as YAML with every interpolation resolved (``${..num_classes}`` shows the number) and
every derived value computed: a LazyCall of a function annotated to return a plain value
(int, float, bool, str), such as ``num_classes_from_dataset``, is called and shown as its
result. Objects are shown by their import path. :func:`diff` compares two resolved configs key
by key (dotted paths, list items by index).
"""
import argparse
import logging
import sys
import typing
from typing import Any, Dict, List, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from detrex_lite.errors import ConfigError

from .validate import apply_overrides_checked, load_config_file

__all__ = ["MISSING", "compute_derived", "diff", "flatten", "load_resolved", "resolve", "run", "to_yaml"]

logger = logging.getLogger("detrex_lite.print_config")
_PLAIN = (int, float, bool, str)
MISSING = "(not set)"


def _target(node: DictConfig):
    from detectron2.utils.registry import locate

    target = node._get_node("_target_")._value() if "_target_" in node else None
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:
            return None
    return target


def _returns_plain_value(func) -> bool:
    if not callable(func) or isinstance(func, type):
        return False
    try:
        returned = typing.get_type_hints(func).get("return")
    except Exception:
        return False
    return returned in _PLAIN


def _has_nested_call(node) -> bool:
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, DictConfig) and ("_target_" in child or _has_nested_call(child)):
            return True
        if isinstance(child, ListConfig) and _has_nested_call(child):
            return True
    return False


def compute_derived(cfg, prefix: str = "") -> List[Tuple[str, str, Any]]:
    """Replaces, in place, every LazyCall of a function annotated to return int/float/bool/str
    (and without nested LazyCalls) by its value; returns [(key, call, value)]. A call that fails
    is left as it is, with a warning."""
    from detectron2.config import instantiate

    derived = []
    keys = list(cfg.keys()) if isinstance(cfg, DictConfig) else list(range(len(cfg)))
    for key in keys:
        child = cfg._get_node(key)
        path = f"{prefix}{key}"
        if isinstance(child, DictConfig) and "_target_" in child:
            func = _target(child)
            if _returns_plain_value(func) and not _has_nested_call(child):
                args = {k: v for k, v in OmegaConf.to_container(child, resolve=True).items() if k != "_target_"}
                call = f"{func.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
                try:
                    value = instantiate(child)
                except Exception as e:  # a dataset that is not registered, ...
                    logger.warning(f"{path}: {call} failed ({type(e).__name__}: {e}); shown unevaluated")
                    continue
                cfg[key] = value
                derived.append((path, call, value))
                continue
        if isinstance(child, (DictConfig, ListConfig)):
            derived += compute_derived(child, path + ".")
    return derived


def _targets_to_names(node) -> None:
    for key in list(node.keys()) if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if "_target_" in child:
                # Saved configs name a target by its shortest import path (detrex_lite.modeling.X);
                # show every target by its defining module so a .py and its config.yaml compare equal.
                target = _target(child) or child._get_node("_target_")._value()
                if not isinstance(target, str):
                    child["_target_"] = f"{target.__module__}.{target.__qualname__}"
            _targets_to_names(child)
        elif isinstance(child, ListConfig):
            _targets_to_names(child)


def resolve(cfg) -> Dict[str, Any]:
    """The config as plain Python containers, interpolations resolved, ``_target_`` as import
    paths. Raises ConfigError naming the key of an interpolation that cannot be resolved."""
    _targets_to_names(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        key = getattr(e, "full_key", "") or "?"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot resolve config key '{key}': {first}") from None


def load_resolved(path: str, overrides: Sequence[str]) -> Tuple[Dict[str, Any], List[Tuple[str, str, Any]]]:
    """(resolved config, derived values) of a config file with overrides applied."""
    import detrex_lite.data  # noqa: F401  (registers the demo datasets used by derived values)

    cfg = load_config_file(path)
    apply_overrides_checked(cfg, list(overrides))
    derived = compute_derived(cfg)
    return resolve(cfg), derived


class _Dumper(yaml.SafeDumper):
    """SafeDumper that shows any other object by its import path or repr."""


def _represent_object(dumper, obj):
    name = getattr(obj, "__qualname__", None)
    text = f"{obj.__module__}.{name}" if name and hasattr(obj, "__module__") else repr(obj)
    return dumper.represent_str(text)


_Dumper.add_multi_representer(object, _represent_object)
_Dumper.add_representer(tuple, lambda dumper, obj: dumper.represent_list(list(obj)))


def _target_first(value):
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k != "_target_")  # stable: only _target_ moves
        return {k: _target_first(value[k]) for k in keys}
    if isinstance(value, list):
        return [_target_first(v) for v in value]
    return value


def to_yaml(container: Dict[str, Any]) -> str:
    """YAML in the config's key order, each object's ``_target_`` first."""
    return yaml.dump(_target_first(container), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def flatten(value, prefix: str = "") -> Dict[str, Any]:
    """{"a.b.0.c": leaf} for nested dicts and lists; empty containers are leaves."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, (list, tuple)) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def diff(a: Dict[str, Any], b: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """[(key, value in a, value in b)] for the flattened keys that differ, in a's key order then
    b's; a key missing on one side has the value MISSING there."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k, MISSING), fb.get(k, MISSING)) for k in keys
            if fa.get(k, MISSING) != fb.get(k, MISSING) or type(fa.get(k)) is not type(fb.get(k))]


def _show(value) -> str:
    if value is MISSING:
        return MISSING
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=10 ** 6).strip().removesuffix("...").strip()


def _describe(path: str, overrides: Sequence[str]) -> str:
    return path + (" " + " ".join(overrides) if overrides else "")


def run(args: argparse.Namespace) -> int:
    """print_config with parsed arguments (``config``, ``overrides``, ``diff``): prints the
    resolved config, or the differing keys as a Markdown table; returns the exit code (2: a
    config mistake, said in one line on stderr)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        a, derived = load_resolved(args.config, args.overrides)
        if args.diff:
            other, other_overrides = args.diff[0], args.diff[1:]
            b, _ = load_resolved(other, other_overrides)
    except ConfigError as e:
        print(f"print_config: error: {e}", file=sys.stderr)
        return 2
    if not args.diff:
        print(f"# {_describe(args.config, args.overrides)}")
        print("# interpolations resolved" + ("; derived values:" if derived else ""))
        for key, call, value in derived:
            print(f"#   {key} = {value!r}  <- {call}")
        print(to_yaml(a), end="")
        return 0
    rows = diff(a, b)
    name_a, name_b = _describe(args.config, args.overrides), _describe(other, other_overrides)
    if not rows:
        print(f"no differences between {name_a} and {name_b}")
        return 0
    print(f"{len(rows)} keys differ\n  A: {name_a}\n  B: {name_b}\n")
    print("| key | A | B |")
    print("|---|---|---|")
    for key, va, vb in rows:
        print(f"| {key} | {_show(va)} | {_show(vb)} |")
    return 0
