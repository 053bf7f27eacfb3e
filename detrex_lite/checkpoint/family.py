"""How a model family's knowledge of its own weights reaches the library.

The loader and the converter name no model's parameters. A model family (``projects/<family>/``)
describes its weights with a :class:`WeightFamily` subclass, usually in
``projects/<family>/checkpoint.py``, and makes it known two ways:

* its model class declares it: ``weight_family: ClassVar[WeightFamily] = MyWeights()`` (the way
  it implements ``forward_heads``); :func:`load_weights` asks ``type(model).weight_family`` why a
  checkpoint does not fit;
* ``@register_weight_family`` puts the class in :data:`WEIGHT_FAMILY_REGISTRY` (detectron2's
  ``Registry``) when the module is imported, so that conversion (``convert_state_dict``,
  ``detect_source``) and the loader's "these look like X weights" hint can ask every family that
  has been imported. ``projects/<family>/__init__.py`` imports the module, and
  ``tools/convert_checkpoint.py`` imports every package under ``projects/``
  (:func:`import_weight_families`), so a new family folder is found without editing anything.

Every hook has a neutral default here (a family that knows nothing explains nothing), so a family
overrides only what it knows. See docs/architecture.md, "Adding a model".
"""
import importlib
import logging
import pkgutil
from types import ModuleType
from typing import Any, Callable, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Type

import torch
from fvcore.common.registry import Registry
from torch import nn

__all__ = [
    "WeightFormat", "WeightFamily", "WEIGHT_FAMILY_REGISTRY", "register_weight_family", "stated_arch_from",
    "registered_weight_families", "weight_family_of", "model_arch", "import_weight_families",
    "import_families_beside",
]

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]

# WeightFamily subclasses by class name, filled by @register_weight_family when a family's module
# is imported (detectron2's registry pattern, as META_ARCH_REGISTRY).
WEIGHT_FAMILY_REGISTRY = Registry("WEIGHT_FAMILY")


def states_nothing(source_config: Mapping[str, Any]) -> Dict[str, Any]:
    """The default :attr:`WeightFormat.stated_arch`: the source states no architecture."""
    return {}


def stated_arch_from(table: Mapping[str, str]) -> Callable[[Mapping[str, Any]], Dict[str, Any]]:
    """A :attr:`WeightFormat.stated_arch` that reads a source's config through ``table``
    ({source config key: arch field}); a key the source lacks, or sets to None, states nothing."""

    def stated_arch(source_config: Mapping[str, Any]) -> Dict[str, Any]:
        """The arch facts the source's own config states (see ``WeightFormat.stated_arch``)."""
        return {ours: source_config[key] for key, ours in table.items() if source_config.get(key) is not None}

    return stated_arch


class WeightFormat(NamedTuple):
    """A foreign layout of a family's weights (an official repository's, Hugging Face's).

    Fields:
        name: the ``--from`` value of tools/convert_checkpoint.py ("official-deformable-detr").
            Several families may share one ("hf"): detection tells them apart.
        detect: ``detect(state_dict) -> bool``, whether the keys (``module.`` removed) have this
            layout. It must not match another family's layout (:func:`detect_source` refuses a
            state dict that two formats claim).
        convert: ``convert(state_dict, *, class_map) -> state_dict`` in this project's names;
            ``class_map`` is "auto", "coco" or "none" (:mod:`detrex_lite.checkpoint.class_heads`).
            Raises ``ConversionError`` (one line) for keys it cannot place.
        stated_arch: ``stated_arch(source_config) -> arch facts`` from what the source file
            states about its architecture: the official repositories' ``args`` (as a dict) and/or
            a Hugging Face ``config.json``, merged (``{}`` when there is none).
    """

    name: str
    detect: Callable[[StateDict], bool]
    convert: Callable[..., Dict[str, torch.Tensor]]
    stated_arch: Callable[[Mapping[str, Any]], Dict[str, Any]] = states_nothing


class WeightFamily:
    """What a model family knows about its weights. Subclass it, override what your family knows,
    decorate the subclass with ``@register_weight_family`` and declare an instance on the model
    class (``weight_family = MyWeights()``). Every default below is neutral: it explains nothing.

    "Arch facts" are a flat dict of plain values (``{"meta_architecture": "DeformableDETR",
    "num_decoder_layers": 6, ...}``): training stores the model's in ``checkpoint["meta"]["arch"]``
    and the loader compares them with the checkpoint's, naming ``arch_options[field]`` for every
    field that differs.
    """

    #: the family's name: what conversion reports (``checkpoint["architecture"]``), "deformable_detr"
    name: ClassVar[str] = ""
    #: arch field -> the config option that sets it ("num_queries" -> "model.num_queries"); only
    #: these fields are compared ("num_classes" is compared through the class heads instead)
    arch_options: ClassVar[Mapping[str, str]] = {}
    #: fields that the tensors only suggest (e.g. a fact an untrained model hides): never compared
    #: from tensors, and a value the source states wins over them
    inferred_only: ClassVar[Tuple[str, ...]] = ()
    #: regular expression that fully matches the state-dict keys of the class heads (first dim =
    #: classes, possibly + a no-object row); None: no key may change shape, even when fine-tuning
    class_head_pattern: ClassVar[Optional[str]] = None
    #: foreign layouts that tools/convert_checkpoint.py converts for this family
    formats: ClassVar[Tuple[WeightFormat, ...]] = ()

    def model_arch(self, model: nn.Module) -> Dict[str, Any]:
        """The arch facts of ``model`` that a checkpoint must share. Default: its class name and
        ``num_classes`` (when it has one); a family adds its own with ``super().model_arch(model)``."""
        arch: Dict[str, Any] = {"meta_architecture": type(model).__name__}
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None:
            arch["num_classes"] = int(num_classes)
        return arch

    def state_dict_arch(self, state_dict: StateDict) -> Dict[str, Any]:
        """The arch facts readable from a state dict's names and shapes in this project's names;
        ``{}`` when it is not this family's (with "meta_architecture" when it is)."""
        return {}

    def keys_point_at(self, missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
        """Config options that missing/unexpected key names point at, for when the facts could
        not be compared (e.g. ``["model.as_two_stage"]``). The library adds the backbone's."""
        return []

    def explain_tied(self, keys: Sequence[str], stored: Mapping[str, Any]) -> Optional[str]:
        """Why ``keys``, one tensor in the model, differ in the checkpoint: a phrase naming the
        config option, ``""`` when the stored arch facts ``stored`` already explain it, or None
        for the library's generic phrase ("... are one tensor in the model but differ ...")."""
        return None

    def warnings(
        self, model_facts: Mapping[str, Any], tensor_facts: Mapping[str, Any], stored: Mapping[str, Any]
    ) -> List[str]:
        """Doubts that do not stop a load (a checkpoint that only looks like another variant):
        one phrase each, logged and kept in ``LoadReport.warnings``."""
        return []

    def describe(self, state_dict: StateDict) -> str:
        """What converted weights are, for tools/convert_checkpoint.py's summary line."""
        return self.state_dict_arch(state_dict).get("meta_architecture", self.name)


def register_weight_family(cls: Type[WeightFamily]) -> Type[WeightFamily]:
    """Class decorator: register a :class:`WeightFamily` subclass (once, at import)."""
    if not (isinstance(cls, type) and issubclass(cls, WeightFamily)) or not cls.name:
        raise TypeError(f"register_weight_family: {cls!r} is not a WeightFamily subclass with a name")
    WEIGHT_FAMILY_REGISTRY.register(cls)
    return cls


def registered_weight_families() -> List[WeightFamily]:
    """An instance of every registered family, by name (stateless: a new one is as good)."""
    return sorted((cls() for _, cls in WEIGHT_FAMILY_REGISTRY), key=lambda family: family.name)


def weight_family_of(model: nn.Module) -> WeightFamily:
    """The family ``type(model)`` declares (``weight_family``), else the neutral one."""
    family = getattr(type(model), "weight_family", None)
    return family if isinstance(family, WeightFamily) else WeightFamily()


def model_arch(model: nn.Module) -> Dict[str, Any]:
    """The arch facts of ``model``, as its family states them (``checkpoint["meta"]["arch"]``)."""
    arch = weight_family_of(model).model_arch(model)
    return {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in arch.items() if v is not None}


def import_weight_families(package: ModuleType) -> List[str]:
    """Import every direct subpackage of ``package`` (e.g. the ``projects`` package), so that each
    family registers itself. Returns the modules imported, by name."""
    names = [f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__) if info.ispkg]
    for name in names:
        importlib.import_module(name)
    return names


def import_families_beside(model: nn.Module) -> List[str]:
    """Import the model families beside ``model``'s own, so that the registry knows them when a
    checkpoint does not fit (weights of another family are then named as such).

    A family declared, as the convention has it, in ``<families>.<family>.<module>`` (its
    ``checkpoint.py``) lives in a folder of families: every subpackage of ``<families>`` is
    imported (:func:`import_weight_families`; one that fails to import is skipped). Nothing is
    imported for a family declared elsewhere, or for the library's neutral family.

    Returns:
        the modules imported, by name.
    """
    parts = type(weight_family_of(model)).__module__.split(".")
    if len(parts) < 3 or parts[0] == __name__.split(".")[0]:
        return []
    try:
        container = importlib.import_module(".".join(parts[:-2]))
    except ImportError:
        return []
    imported = []
    for info in pkgutil.iter_modules(getattr(container, "__path__", [])):
        if info.ispkg:
            name = f"{container.__name__}.{info.name}"
            try:
                importlib.import_module(name)
            except Exception as e:  # a broken sibling must not hide the message being built
                logger.debug(f"import_families_beside: {name} does not import ({type(e).__name__}: {e})")
                continue
            imported.append(name)
    return imported
