"""Weights: strict loading (one loader for every tool), conversion of foreign formats through the
model families' hooks (:mod:`.family`), torchvision ResNet conversion, and the run folder.
See docs/checkpoints.md; how a model family plugs in: docs/architecture.md, "Adding a model"."""
from .convert import RESNET_SOURCE, converted_arch, convert_state_dict, describe_converted, detect_source, source_formats
from .family import (
    WEIGHT_FAMILY_REGISTRY,
    WeightFamily,
    WeightFormat,
    import_weight_families,
    model_arch,
    register_weight_family,
    registered_weight_families,
    weight_family_of,
)
from .io import load_state_dict, save_checkpoint
from .io import CheckpointError, CheckpointFileError, read_checkpoint
from .loader import (
    PURPOSES,
    CheckpointMismatchError,
    DetrexCheckpointer,
    LoadReport,
    apply_state_dict,
    ema_requested,
    load_checkpoint,
    load_model_state,
    load_weights,
)
from .rename import ConversionError, Rule, rename_keys
from .resnet import convert_torchvision_resnet, hf_resnet_to_torchvision

__all__ = [
    "RESNET_SOURCE", "converted_arch", "convert_state_dict", "describe_converted", "detect_source", "source_formats",
    "WEIGHT_FAMILY_REGISTRY", "WeightFamily", "WeightFormat", "import_weight_families", "model_arch",
    "register_weight_family", "registered_weight_families", "weight_family_of",
    "load_state_dict", "save_checkpoint",
    "CheckpointError", "CheckpointFileError", "read_checkpoint",
    "PURPOSES", "CheckpointMismatchError", "DetrexCheckpointer", "LoadReport", "apply_state_dict", "ema_requested",
    "load_checkpoint", "load_model_state", "load_weights",
    "ConversionError", "Rule", "rename_keys",
    "convert_torchvision_resnet", "hf_resnet_to_torchvision",
]
