"""Checkpoint conversion (official Deformable-DETR / DETR, Hugging Face, torchvision ResNet ->
detrex_lite names) and strict loading. See docs/checkpoints.md."""
from .convert import SOURCES, convert_state_dict, detect_source
from .deformable_detr import hf_to_official_deformable_detr, official_deformable_detr_to_detrex
from .detr import hf_to_official_detr, official_detr_to_detrex
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
    "SOURCES", "convert_state_dict", "detect_source",
    "hf_to_official_deformable_detr", "official_deformable_detr_to_detrex",
    "hf_to_official_detr", "official_detr_to_detrex",
    "load_state_dict", "save_checkpoint",
    "CheckpointError", "CheckpointFileError", "read_checkpoint",
    "PURPOSES", "CheckpointMismatchError", "DetrexCheckpointer", "LoadReport", "apply_state_dict", "ema_requested",
    "load_checkpoint", "load_model_state", "load_weights",
    "ConversionError", "Rule", "rename_keys",
    "convert_torchvision_resnet", "hf_resnet_to_torchvision",
]
