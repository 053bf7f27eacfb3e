"""Reading checkpoints in the formats users bring, writing ours."""
import argparse
import json
import logging
import os
from typing import Any, Dict, Optional

import torch

__all__ = ["load_state_dict", "read_hf_config", "save_checkpoint"]

logger = logging.getLogger(__name__)

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _torch_load(path: str) -> Any:
    # weights_only=True refuses arbitrary pickled objects; the official Deformable-DETR and DETR
    # checkpoints only add an argparse.Namespace ("args") to tensors and plain containers.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError and friends
            raise RuntimeError(
                f"{path}: cannot be read with torch.load(weights_only=True): {e}\n"
                "Checkpoints are read without running pickled code; re-save the state dict "
                "alone (torch.save(torch.load(path, weights_only=False)['model'], new_path)) "
                "if you trust this file."
            ) from e


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model state dict stored at ``path``.

    Accepts a Hugging Face model directory (``model.safetensors`` or ``pytorch_model.bin``),
    a ``.safetensors`` file, or a torch file holding a state dict directly or under "model"
    (official repositories, detectron2) or "state_dict".
    """
    if os.path.isdir(path):
        for name in _HF_WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return load_state_dict(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: a directory without {' or '.join(_HF_WEIGHT_FILES)}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    loaded = _torch_load(path)
    if isinstance(loaded, dict):
        for field in ("model", "state_dict"):
            if isinstance(loaded.get(field), dict):
                loaded = loaded[field]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), possibly under 'model'")
    return dict(loaded)


def read_hf_config(path: str) -> Optional[Dict[str, Any]]:
    """``config.json`` next to (or in) a Hugging Face checkpoint, if there is one."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        return json.load(f)


def save_checkpoint(path: str, state_dict: Dict[str, torch.Tensor], **meta: Any) -> None:
    """Write ``{"model": state_dict, "__author__": "detrex_lite", **meta}`` (detectron2's
    layout, loadable with ``train.init_checkpoint`` and ``torch.load(weights_only=True)``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {"model": {k: v.contiguous() for k, v in state_dict.items()}, "__author__": "detrex_lite"}
    payload.update(meta)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the final name
