"""Reading checkpoints in the formats users bring, writing ours."""
import argparse
import json
import logging
import os
import re
from typing import Any, Dict, Optional

import torch
from detrex_lite.errors import CheckpointError, CheckpointFileError  # noqa: F401  (re-exported)

__all__ = [
    "CheckpointError", "CheckpointFileError", "load_state_dict", "peek_meta", "read_checkpoint", "read_hf_config",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


_WHAT_TO_DO = (
    "expected a .pth written by tools/train_net.py or tools/convert_checkpoint.py "
    "(torch.save of a state dict, possibly under 'model')"
)


def peek_meta(path: str) -> Dict[str, Any]:
    """``checkpoint["meta"]`` of a local checkpoint file, read memory-mapped (the weights, hundreds
    of MB, are not read); {} when the file is missing, cannot be read this way (damaged, not a
    dict, a legacy non-zip file) or has no dict ``meta``: loading it for real says why."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


# The run metadata's keys that are read back (checkpoint/run.py ``run_metadata`` writes them) and
# the types they must have; None stands for a missing value.
_META_TYPES = {
    "arch": (dict,),
    "num_classes": (int,),
    "dataset": (str,),
    "thing_classes": (list, tuple),
    "thing_dataset_id_to_contiguous_id": (dict,),
    "pixel_mean": (list, tuple),
    "pixel_std": (list, tuple),
    "test_resize": (dict,),
    "use_ema_weights": (bool,),
}


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _type_names(types: tuple) -> str:
    return " or ".join(_a(t.__name__) for t in types)


def _check_meta(path: str, meta: Any) -> None:
    """``checkpoint["meta"]`` (the run metadata) and the keys of it that are read back have the
    types training writes; a str or a list there used to end in a traceback far from the file.

    Raises:
        CheckpointFileError: naming the file and the key.
    """
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise CheckpointFileError(
            f"{path}: its 'meta' is {_a(type(meta).__name__)}, expected a dict of run metadata (class names, "
            "architecture, test resize) as tools/train_net.py writes it; remove the key or re-save the checkpoint"
        )
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise CheckpointFileError(
                f"{path}: meta[{key!r}] is {_a(type(value).__name__)} ({repr(value)[:40]}), expected "
                f"{_type_names(types)}; remove the key or re-save the checkpoint"
            )
    resize = meta.get("test_resize")
    if resize is not None and not (
        isinstance(resize.get("short_edge_length"), (int, list, tuple)) and isinstance(resize.get("max_size"), int)
    ):
        raise CheckpointFileError(
            f"{path}: meta['test_resize'] is {resize!r}, expected {{'short_edge_length': [int, ...], 'max_size': int}}"
        )


def _plain_pickle(path: str) -> Optional[str]:
    """What a plain Python pickle (``pickle.dump``, not ``torch.save``) at ``path`` holds: the type
    name of its object, or "objects of <module.name>"; None when it is not one. Read without
    running code: no global (class, function) is looked up."""
    import pickle

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise pickle.UnpicklingError(f"global {module}.{name}")

    with open(path, "rb") as f:
        if f.read(1) != b"\x80":  # the PROTO opcode every pickle since protocol 2 starts with
            return None
        f.seek(0)
        try:
            loaded = _NoGlobals(f).load()
        except pickle.UnpicklingError as e:
            found = re.match(r"global ([\w.]+)", str(e))
            return f"objects of {found[1]}" if found else None
        except Exception:
            return None
    if isinstance(loaded, int) and loaded == torch.serialization.MAGIC_NUMBER:
        return None  # torch.save's legacy format, damaged after its first record
    return f"a {type(loaded).__name__}"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _torch_load(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    weights_only=True refuses arbitrary pickled objects; the official Deformable-DETR and DETR
    checkpoints only add an argparse.Namespace ("args") to tensors and plain containers.

    Raises:
        CheckpointFileError: missing, empty, text, damaged or otherwise unreadable file.
    """
    if not os.path.isfile(path):
        raise CheckpointFileError(f"{path}: checkpoint file not found")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointFileError(f"{path}: the file is empty (an interrupted copy or download?); {_WHAT_TO_DO}")
    with open(path, "rb") as f:
        head = f.read(64)
    if _looks_like_text(head):
        first = head.decode("utf-8").splitlines()[0][:40] if head.strip() else ""
        kind = ""
        if first.startswith("version https://git-lfs"):
            kind = ", a Git LFS pointer: run git lfs pull"
        elif first.lstrip().lower().startswith(("<!doctype html", "<html")):
            kind = ", a web page: the download failed"
        raise CheckpointFileError(
            f"{path}: is a text file, not a checkpoint (it starts with {first!r}{kind}); {_WHAT_TO_DO}"
        )
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError, RuntimeError from the zip reader, ...
            message = str(e)
            unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
            if unsupported:
                raise CheckpointFileError(
                    f"{path}: holds pickled Python objects ({unsupported[1]}) that are not loaded, "
                    "because loading them can run code; if you trust the file, re-save its state "
                    "dict alone: torch.save(torch.load(path, weights_only=False)['model'], new_path)"
                ) from None
            pickled = _plain_pickle(path)
            if pickled is not None:
                raise CheckpointFileError(
                    f"{path}: is a plain Python pickle (pickle.dump, not torch.save) holding {pickled}, not a "
                    f"checkpoint; {_WHAT_TO_DO}"
                ) from None
            if "zip archive" in message or "central directory" in message:
                reason = "a truncated or damaged PyTorch file"
            else:
                reason = "not a PyTorch checkpoint (random or damaged bytes?)"
            raise CheckpointFileError(
                f"{path}: cannot be read: {reason} ({size} bytes); {_WHAT_TO_DO}"
            ) from None


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint at ``path`` as ``{"model": state_dict, **everything else}``.

    A bare state dict is wrapped; one under "state_dict" is moved to "model".

    Raises:
        CheckpointFileError: unreadable file, or one that holds no state dict (name -> tensor).
    """
    loaded = _torch_load(path)
    if not isinstance(loaded, dict):
        raise CheckpointFileError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict; {_WHAT_TO_DO}"
        )
    if isinstance(loaded.get("model"), dict):
        checkpoint = dict(loaded)
    elif isinstance(loaded.get("state_dict"), dict):
        checkpoint = {k: v for k, v in loaded.items() if k != "state_dict"}
        checkpoint["model"] = loaded["state_dict"]
    else:
        checkpoint = {"model": loaded}
    _check_meta(path, checkpoint.get("meta"))
    state = checkpoint["model"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or bad:
        what = "is empty" if not state else f"has non-tensor entries ({', '.join(map(str, bad[:3]))})"
        raise CheckpointFileError(f"{path}: the state dict {what}; {_WHAT_TO_DO}")
    return checkpoint


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
    return dict(read_checkpoint(path)["model"])


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
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)  # never leave a half-written checkpoint under the final name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
