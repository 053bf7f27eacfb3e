"""A training output folder is a model: what inference needs is saved with the run.

Training stores ``checkpoint["meta"]`` in every checkpoint (class names, the dataset id mapping,
pixel mean/std, test-time resize, whether the EMA weights are the ones to use, the architecture,
how its datasets were registered: :mod:`detrex_lite.data.registration`), a ``datasets.json`` (the
same registrations) and a ``config.yaml`` whose class count is a number, not a call on a dataset that only the
training process registered. So ``Predictor.from_run(dir)``, ``tools/demo.py --run``,
``tools/export_onnx.py --run`` and ``tools/train_net.py --eval-only --run`` work in a fresh
process that has registered nothing. Hugging Face models carry ``id2label`` the same way.
"""
import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from .best import BEST_CHECKPOINT, describe_best, read_best
from .family import model_arch
from .io import CheckpointFileError

__all__ = [
    "RunMetadata", "run_metadata", "resolve_num_classes", "find_run_checkpoint", "run_config_path",
    "metadata_from_meta", "test_resize_of", "coco_run_metadata", "numbered_checkpoints", "read_last_checkpoint",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"model_(\d+)\.pth")


def _is_num_classes_call(node: Any) -> bool:
    from detrex_lite.data.classes import num_classes_from_dataset

    try:
        target = node.get("_target_", None)
    except Exception:
        return False
    if target is num_classes_from_dataset:
        return True
    name = target if isinstance(target, str) else getattr(target, "__qualname__", "")
    return isinstance(name, str) and name.rsplit(".", 1)[-1] == "num_classes_from_dataset"


def resolve_num_classes(cfg: Any) -> List[str]:
    """Replace, in place, every ``L(num_classes_from_dataset)(names=...)`` in ``cfg`` by the number
    it gives (the datasets must be registered now). Returns the dotted keys replaced.

    The saved ``config.yaml`` then states the class count as an int and loads in a process that
    registered nothing.
    """
    from detectron2.config import instantiate
    from omegaconf import DictConfig, ListConfig

    replaced = []

    def walk(node, prefix):
        items = node.items() if isinstance(node, DictConfig) else enumerate(node)
        for key, value in list(items):
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, DictConfig) and _is_num_classes_call(value):
                node[key] = int(instantiate(value))
                replaced.append(path)
            elif isinstance(value, (DictConfig, ListConfig)):
                walk(value, path)

    walk(cfg, "")
    return replaced


def test_resize_of(augmentations) -> Optional[Dict[str, Any]]:
    """``{"short_edge_length": [..], "max_size": ..}`` of the first ResizeShortestEdge, or None."""
    from detectron2.data import transforms as T

    for aug in augmentations or []:
        if isinstance(aug, T.ResizeShortestEdge):
            return {"short_edge_length": [int(s) for s in aug.short_edge_length], "max_size": int(aug.max_size)}
    return None


def _dataset_metadata(cfg: Any) -> Dict[str, Any]:
    """The classes of the first training dataset (:meth:`ClassInfo.to_meta`), when it is
    registered; {} otherwise."""
    from detectron2.data import DatasetCatalog
    from omegaconf import OmegaConf

    from detrex_lite.data.classes import ClassInfo

    names = OmegaConf.select(cfg, "dataloader.train.dataset.names", default=None)
    if names is None:
        return {}
    name = names if isinstance(names, str) else list(names)[0]
    if name not in DatasetCatalog.list():
        return {}
    info = ClassInfo.of_registered(name)
    return info.to_meta() if info is not None else {"dataset": name}


def run_metadata(cfg: Any, model: nn.Module) -> Dict[str, Any]:
    """The facts inference needs, for ``checkpoint["meta"]`` (plain Python values only, so the
    file stays loadable with ``torch.load(weights_only=True)``)."""
    from detectron2.config import instantiate
    from omegaconf import OmegaConf

    from .loader import ema_requested

    arch = model_arch(model)
    meta: Dict[str, Any] = {"num_classes": arch.get("num_classes"), "arch": arch}
    meta.update(_dataset_metadata(cfg))
    from detrex_lite.data.registration import config_dataset_names, dataset_records

    # how the datasets were registered: a tool given only this checkpoint registers them again
    meta["datasets"] = dataset_records(config_dataset_names(cfg))
    for name in ("pixel_mean", "pixel_std"):
        value = getattr(model, name, None)
        if value is not None:
            meta[name] = [round(float(v), 4) for v in value.flatten().tolist()]
    augs = OmegaConf.select(cfg, "dataloader.test.mapper.augmentation", default=None)
    if augs is not None:
        try:
            built = instantiate(augs)
            resize = test_resize_of(built if isinstance(built, (list, tuple)) else [built])
        except Exception as e:  # the metadata is a convenience; never stop training for it
            logger.warning(f"run metadata: cannot read the test-time resize ({type(e).__name__}: {e})")
            resize = None
        if resize:
            meta["test_resize"] = resize
    meta["use_ema_weights"] = ema_requested(cfg)
    return meta


class RunMetadata:
    """A checkpointable that writes the run metadata into every checkpoint
    (``checkpointables["meta"] = RunMetadata(run_metadata(cfg, model))``); loading is a no-op."""

    def __init__(self, meta: Dict[str, Any]):
        self.meta = dict(meta)

    def state_dict(self) -> Dict[str, Any]:
        return dict(self.meta)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # The current config's facts are written on the next save; what an evaluation found
        # (the display threshold) is kept until the next evaluation replaces it.
        if isinstance(state, dict) and "display_threshold" in state:
            self.meta["display_threshold"] = state["display_threshold"]


def run_config_path(run_dir: str) -> str:
    """``run_dir/config.yaml``; one-line FileNotFoundError when it is not a training folder."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--run {run_dir}: no such folder")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--run {run_dir}: no config.yaml in it (is it a train_net output folder?)")
    return path


def numbered_checkpoints(run_dir: str) -> List[Tuple[int, str]]:
    """(iteration, file name) of every ``model_<iteration>.pth`` in ``run_dir``, oldest first."""
    names = os.listdir(run_dir) if run_dir and os.path.isdir(run_dir) else []
    return sorted((int(m[1]), m[0]) for m in map(_CHECKPOINT_RE.fullmatch, names) if m)


def read_last_checkpoint(run_dir: str) -> str:
    """The checkpoint file that ``run_dir/last_checkpoint`` names, or "" when there is no such
    file, or it is damaged (not a short UTF-8 file name) or names a file that does not exist
    (both with a warning naming it)."""
    last = os.path.join(run_dir, "last_checkpoint")
    if not os.path.isfile(last):
        return ""
    try:
        with open(last, "rb") as f:
            name = f.read(4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        logger.warning(f"{last} cannot be read ({type(e).__name__}); using the newest other checkpoint")
        return ""
    if not name or os.path.basename(name) != name or not name.isprintable():
        logger.warning(f"{last} does not hold a file name ({name[:40]!r}); using the newest other checkpoint")
        return ""
    named = os.path.join(run_dir, name)
    if not os.path.isfile(named):
        logger.warning(f"{last} names {named}, which does not exist; using the newest other checkpoint")
        return ""
    return named


def find_run_checkpoint(run_dir: str, name: Optional[str] = None) -> str:
    """The checkpoint of a run to use: ``name`` (a file in ``run_dir`` or a path) when given, else
    ``model_best.pth`` (the best evaluation's weights; logged with its metric), else the newest
    complete one: the file ``last_checkpoint`` names (written only after the file is complete),
    else ``model_final.pth``, else the ``model_<iter>.pth`` of the highest iteration."""
    if name:
        path = name if os.path.isfile(name) else os.path.join(run_dir, name)
        if not os.path.isfile(path):
            raise CheckpointFileError(f"{name}: no such checkpoint (in {run_dir} or as a path)")
        return path
    best = os.path.join(run_dir, BEST_CHECKPOINT)
    if os.path.isfile(best):
        said = describe_best(read_best(best))
        logger.info(f"{run_dir}: using {BEST_CHECKPOINT}{f' ({said})' if said else ''}, the run's best evaluation")
        return best
    named = read_last_checkpoint(run_dir)
    if named:
        return named
    final = os.path.join(run_dir, "model_final.pth")
    if os.path.isfile(final):
        return final
    numbered = numbered_checkpoints(run_dir)
    if not numbered:
        raise CheckpointFileError(f"{run_dir}: no checkpoint (model_final.pth or model_<iteration>.pth) in it")
    return os.path.join(run_dir, numbered[-1][1])


def metadata_from_meta(meta: Dict[str, Any], name: str = "checkpoint"):
    """A detectron2 ``Metadata`` (class names, dataset ids) built from ``checkpoint["meta"]``,
    without touching the global MetadataCatalog; None when the meta has no class names
    (:meth:`ClassInfo.from_meta`, :meth:`ClassInfo.to_metadata`)."""
    from detrex_lite.data.classes import ClassInfo

    info = ClassInfo.from_meta(meta)
    return None if info is None else info.to_metadata(name)


def coco_run_metadata(num_classes: int, arch: Dict[str, Any]) -> Dict[str, Any]:
    """Run metadata for released COCO weights (tools/convert_checkpoint.py): detectron2's COCO
    class names and ids, ImageNet pixel statistics and the 800/1333 test resize of the papers."""
    from detrex_lite.data.classes import ClassInfo

    coco = ClassInfo.coco()
    meta: Dict[str, Any] = {
        "num_classes": num_classes,
        "arch": dict(arch),
        "pixel_mean": [123.675, 116.280, 103.530],
        "pixel_std": [58.395, 57.120, 57.375],
        "test_resize": {"short_edge_length": [800], "max_size": 1333},
        "use_ema_weights": False,
    }
    if num_classes == coco.num_classes:
        meta.update(coco.to_meta())  # dataset "coco_2017_val", thing_classes, the dataset ids
    return meta
