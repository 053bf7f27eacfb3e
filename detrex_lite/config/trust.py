"""Which callables a saved ``config.yaml`` may name before anything is built from it.

A LazyConfig is code: ``instantiate`` imports and calls whatever each ``_target_`` names. A
``.py`` config is code its user chose to run; a ``config.yaml`` from a run folder is a file that
may have come from someone else (a shared run, a downloaded result), and
``pwn: {_target_: os.system, command: ...}`` in it would run a shell command at
``--eval-only --run`` or ``Predictor.from_run``. The loader refuses pickles in ``.pth`` files for
the same reason. So before a YAML config is used, every ``_target_`` must be in the allow-list
below, or the user says ``--trust-config`` (``trust=True``).

The allow-list (docs/reliability.md states it too):

* ``detrex_lite.*`` and ``projects.*`` (this project and its model families), public names only;
* detectron2's building blocks: ``detectron2.{data,modeling,layers,solver,evaluation,structures}.*``;
* ``fvcore.common.param_scheduler.*`` (the schedules detectron2 uses);
* torch's building blocks: ``torch.nn.*``, ``torch.optim.*``, ``torch.utils.data.*``, and
  ``torchvision.{models,ops,transforms}.*``;
* the user's own modules: a name whose top-level package is found (without importing it) in a
  folder that is neither the standard library nor an installed package's ``site-packages``, e.g.
  the user's project on ``PYTHONPATH`` or an editable install (``my_project.data.MyMapper``).
  ``os``, ``subprocess``, ``builtins``, ``numpy``... are installed or built in, so they are refused.

Names with a private component (``_x``) are refused everywhere: none of the shipped configs uses
one, and private helpers (e.g. loaders that unpickle) are where unsafe code hides.
"""
import importlib.util
import os
import site
import sys
import sysconfig
from typing import Any, List, Tuple

from omegaconf import DictConfig, ListConfig

from detrex_lite.errors import ConfigError

__all__ = [
    "ALLOWED_TARGET_PREFIXES", "is_allowed_target", "is_users_module", "untrusted_targets", "check_config_targets",
    "config_targets", "missing_target_reason", "check_targets_exist",
]

ALLOWED_TARGET_PREFIXES = (
    "detrex_lite.",
    "projects.",
    "detectron2.data.",
    "detectron2.modeling.",
    "detectron2.layers.",
    "detectron2.solver.",
    "detectron2.evaluation.",
    "detectron2.structures.",
    "fvcore.common.param_scheduler.",
    "torch.nn.",
    "torch.optim.",
    "torch.utils.data.",
    "torchvision.models.",
    "torchvision.ops.",
    "torchvision.transforms.",
)


def _installed_roots() -> List[str]:
    """The folders of the standard library and of installed packages (real paths)."""
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    paths.add(site.getusersitepackages())
    paths.update({sys.prefix, sys.base_prefix, sys.exec_prefix})
    return [os.path.realpath(p) for p in paths if p]


def is_users_module(top_level: str) -> bool:
    """Whether the top-level module ``top_level`` is the user's own code: found, without being
    imported, in a folder outside the standard library and the installed packages."""
    if top_level in sys.builtin_module_names:
        return False
    try:
        spec = importlib.util.find_spec(top_level)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    locations = list(spec.submodule_search_locations or [])
    if spec.origin and spec.has_location:
        locations.append(os.path.dirname(spec.origin))
    if not locations:
        return False  # built in or frozen
    roots = _installed_roots()
    for location in locations:
        real = os.path.realpath(location)
        if any(real == root or real.startswith(root + os.sep) for root in roots):
            return False
    return True


def is_allowed_target(target: Any) -> bool:
    """Whether ``target`` (a ``_target_`` value of a YAML config) is a dotted name in the
    allow-list (see the module docstring)."""
    if not isinstance(target, str):
        return False
    parts = target.split(".")
    if any(not p.isidentifier() or p.startswith("_") for p in parts):
        return False
    return target.startswith(ALLOWED_TARGET_PREFIXES) or (len(parts) > 1 and is_users_module(parts[0]))


def untrusted_targets(cfg: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    """(key, target) of every ``_target_`` in ``cfg`` outside the allow-list, in file order.
    Interpolations are not resolved (a target written as ``${...}`` is refused as it stands)."""
    return [(key, target) for key, target in config_targets(cfg, prefix) if not is_allowed_target(target)]


def config_targets(cfg: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    """(key, target) of every ``_target_`` in ``cfg``, in file order (the key of the node that
    holds it; "(top level)" for the root), interpolations unresolved."""
    found: List[Tuple[str, Any]] = []
    if isinstance(cfg, DictConfig):
        items = [(str(k), cfg._get_node(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        items = [(str(i), cfg._get_node(i)) for i in range(len(cfg))]
    elif isinstance(cfg, dict):
        items = [(str(k), v) for k, v in cfg.items()]
    elif isinstance(cfg, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(cfg)]
    else:
        return found
    for key, node in items:
        path = f"{prefix}.{key}" if prefix else key
        if key == "_target_":
            found.append((prefix or "(top level)", node._value() if hasattr(node, "_value") else node))
            continue
        if isinstance(node, (DictConfig, ListConfig, dict, list, tuple)):
            found.extend(config_targets(node, path))
    return found


def missing_target_reason(target: str) -> str:
    """Why the dotted name ``target`` does not name an object ("" when it does): the first
    module that does not exist or fails to import, or the first attribute a module lacks.
    Imports the modules on the way (only call it for names the allow-list accepts, or trusted)."""
    parts = target.split(".")
    obj, found = None, 0
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but imports a missing one
                return f"importing {name} fails: {e}"
            break
        except Exception as e:
            return f"importing {name} fails: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        found = i
    if found == 0:
        return f"there is no module {parts[0]!r}"
    for i in range(found, len(parts)):
        if not hasattr(obj, parts[i]):
            owner = ".".join(parts[:i])
            return f"{'module' if i == found else 'object'} {owner} has no {parts[i]!r}"
        obj = getattr(obj, parts[i])
    return ""


def check_targets_exist(cfg: Any, source: str) -> None:
    """Raise ConfigError naming the first key whose ``_target_`` (a dotted name) names nothing:
    a wrong module or attribute, reported before anything is built (instantiate would fail
    half-way with a traceback)."""
    for key, target in config_targets(cfg):
        if isinstance(target, str) and "${" not in target:
            reason = missing_target_reason(target)
            if reason:
                raise ConfigError(f"{source}: {key} has _target_ {target!r}, which does not exist: {reason}")


def check_config_targets(cfg: Any, source: str) -> None:
    """Raise ConfigError naming the first key whose ``_target_`` is outside the allow-list.

    Args:
        cfg: a config loaded from YAML (nothing instantiated yet).
        source: the file it came from, for the message.
    """
    bad = untrusted_targets(cfg)
    if bad:
        key, target = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConfigError(
            f"{source}: {key} has _target_ {target!r}, which a saved config may not call{more}; "
            "allowed are this project's, detectron2's and torch's building blocks and your own modules "
            "(docs/reliability.md). "
            "If you trust this file, pass --trust-config"
        )
