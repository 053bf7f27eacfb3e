"""How a run's datasets were registered, kept with the run so that every tool registers them again.

A dataset registered in the user's config file (``register_coco_dataset``, or detectron2's
``register_coco_instances``) exists only in the processes that ran that file: a tool given the
run folder, a checkpoint or a saved ``config.yaml`` would not know it. So training records, for
each dataset its config names (``dataloader.train.dataset.names``,
``dataloader.test.dataset.names``, ``dataloader.evaluator.dataset_name``), how it was registered:

* ``{"builtin": true}``: detectron2's builtin datasets (COCO, LVIS, ...) and the demo datasets,
  which importing detectron2 / :mod:`detrex_lite.data` registers in every process;
* ``{"json_file": ..., "image_root": ..., "loader": "detrex_lite" | "detectron2"}``: a COCO-format
  json and its image folder (absolute paths), registered again with ``register_coco_dataset`` or
  ``register_coco_instances`` as the training did;
* ``{"registered_by_code": true}``: registered some other way (nothing to register it with).

The records are written to ``<output_dir>/datasets.json`` (atomically, merged with the names
already there) and into every checkpoint's ``meta["datasets"]`` (so a copied checkpoint alone is
enough). :func:`register_recorded_datasets` registers the names that are not registered yet;
:func:`register_json_dataset` registers data never registered anywhere (the tools' ``--gt-json
FILE --image-root DIR``). A name that is still unknown gets :func:`unknown_dataset_message`: the
user's own datasets and the closest names, not detectron2's ~60 builtin names.
"""
import difflib
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import detectron2.data.datasets  # noqa: F401  (registers detectron2's builtin datasets)
from detectron2.data import DatasetCatalog, MetadataCatalog

from detrex_lite.errors import DatasetError

from .demo_dataset import DEMO_DATASET_NAMES

__all__ = [
    "DATASETS_FILE",
    "config_dataset_names",
    "dataset_records",
    "is_builtin_dataset",
    "read_dataset_records",
    "register_json_dataset",
    "register_recorded_datasets",
    "run_folder_of_predictions",
    "tool_dataset",
    "unknown_dataset_message",
    "user_datasets",
    "write_dataset_records",
]

logger = logging.getLogger(__name__)

DATASETS_FILE = "datasets.json"

# The names detectron2 registers when imported (taken before any user code can register one:
# importing this package is the first thing a config that registers a dataset does).
_DETECTRON2_BUILTIN = frozenset(DatasetCatalog.list())

_DATASET_KEYS = ("dataloader.train.dataset.names", "dataloader.test.dataset.names", "dataloader.evaluator.dataset_name")


def is_builtin_dataset(name: str) -> bool:
    """Whether every process has ``name`` registered: a detectron2 builtin or a demo dataset."""
    return name in _DETECTRON2_BUILTIN or name in DEMO_DATASET_NAMES


def user_datasets() -> List[str]:
    """The registered names that are not builtin (those the user's code registered), sorted."""
    return sorted(n for n in DatasetCatalog.list() if not is_builtin_dataset(n))


def config_dataset_names(cfg: Any, keys: Sequence[str] = _DATASET_KEYS) -> List[str]:
    """The dataset names a config uses at ``keys`` (default: train, test, evaluator), in that
    order, without repeats. A value that cannot be resolved (a broken interpolation) is skipped."""
    from omegaconf import OmegaConf

    names: List[str] = []
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that does not resolve: nothing to record
            continue
        if isinstance(value, str):
            value = [value]
        for name in value or []:
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def _record_of(name: str) -> Optional[Dict[str, Any]]:
    """How ``name`` is registered now (see the module docstring), or None when it is not."""
    if name not in DatasetCatalog.list():
        return None
    if is_builtin_dataset(name):
        return {"builtin": True}
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
    if json_file and image_root and meta.get("evaluator_type", None) == "coco":
        loader = "detrex_lite" if meta.get("annotations_validated", False) else "detectron2"
        return {"json_file": os.path.abspath(json_file), "image_root": os.path.abspath(image_root), "loader": loader}
    return {"registered_by_code": True}


def dataset_records(names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """{name: record} of the registered names among ``names`` (unregistered ones are left out)."""
    records = {}
    for name in names:
        record = _record_of(name)
        if record is not None:
            records[name] = record
    return records


def read_dataset_records(run_dir: str) -> Dict[str, Dict[str, Any]]:
    """The records of ``run_dir/datasets.json``; {} when there is none (a run of an older
    version). A damaged file is a DatasetError naming it."""
    path = os.path.join(run_dir, DATASETS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            records = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read ({type(e).__name__}: {e}); delete it, or register the datasets in your config") from None
    if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
        raise DatasetError(f"{path}: expected {{dataset name: {{...}}}}; delete it, or register the datasets in your config")
    return records


def write_dataset_records(output_dir: str, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """Record how ``names`` are registered in ``output_dir/datasets.json`` (atomically; the
    names already recorded there are kept unless recorded again). Returns what the file holds."""
    from detrex_lite.utils import json_io

    try:
        records = read_dataset_records(output_dir)
    except DatasetError as e:
        logger.warning(f"{e}: writing it again")
        records = {}
    records.update(dataset_records(names))
    json_io.dump(records, os.path.join(output_dir, DATASETS_FILE), indent=2)
    return records


def _check_files(name: str, json_file: str, image_root: str, source: str, hint: str) -> None:
    for path, what, exists in ((json_file, "annotation file", os.path.isfile), (image_root, "image folder", os.path.isdir)):
        if not exists(path):
            raise DatasetError(f"dataset '{name}' (recorded in {source}): {what} not found: {path}; {hint}")


def register_recorded_datasets(
    records: Optional[Dict[str, Dict[str, Any]]], source: str,
    hint: str = "register the dataset in your config, or move the files back",
) -> List[str]:
    """Register, from ``records`` (:func:`read_dataset_records`, ``meta["datasets"]``), every
    COCO-json dataset that is not registered yet; names already registered are left as they
    are. Returns the names registered.

    Args:
        source: where the records come from (the file), for the messages.
        hint: what to do when a recorded file is missing (the tool's way in).

    Raises:
        DatasetError: a recorded json or image folder does not exist (naming it and ``source``).
    """
    registered = []
    for name, record in (records or {}).items():
        if name in DatasetCatalog.list() or not isinstance(record, dict) or "json_file" not in record:
            continue
        json_file, image_root = str(record["json_file"]), str(record.get("image_root", ""))
        _check_files(name, json_file, image_root, source, hint)
        if record.get("loader") == "detectron2":
            from detectron2.data.datasets import register_coco_instances

            register_coco_instances(name, {}, json_file, image_root)
        else:
            from .coco import register_coco_dataset

            register_coco_dataset(name, json_file, image_root)
        registered.append(name)
    if registered:
        logger.info(f"Registered {', '.join(registered)} as recorded in {source}")
    return registered


def register_json_dataset(json_file: str, image_root: Optional[str] = None, name: Optional[str] = None) -> str:
    """Register a COCO json never registered anywhere (``--gt-json FILE [--image-root DIR]``)
    with ``register_coco_dataset``; returns its name: ``name``, else the json's file name.
    ``image_root`` defaults to the json's folder (enough where no image is read).

    Raises:
        DatasetError: the file or folder does not exist, or ``name`` is registered with other files.
    """
    image_root = image_root or os.path.dirname(os.path.abspath(json_file))
    name = name or os.path.basename(json_file)
    for path, flag, exists in ((json_file, "--gt-json", os.path.isfile), (image_root, "--image-root", os.path.isdir)):
        if not exists(path):
            raise DatasetError(f"{flag} {path}: no such {'file' if flag == '--gt-json' else 'folder'}")
    from .coco import register_coco_dataset

    register_coco_dataset(name, os.path.abspath(json_file), os.path.abspath(image_root))
    return name


def unknown_dataset_message(name: str, config_names: Iterable[str] = (),
                            hint: str = "register it in your config with register_coco_dataset",
                            lead: Optional[str] = None) -> str:
    """One line for a dataset that is not registered: ``lead`` (default "dataset 'NAME' is not
    registered"), the closest registered or config names and the user's own datasets
    (detectron2's builtin names are left out), then ``hint``."""
    config_names = [n for n in config_names if n != name]
    own = [n for n in user_datasets() if n not in config_names]
    candidates = sorted(set(DatasetCatalog.list()) | set(config_names))
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    parts = []
    if close:
        parts.append("closest: " + ", ".join(close))
    if config_names:
        parts.append("the config's datasets: " + ", ".join(config_names))
    parts.append("registered by your code: " + (", ".join(own) if own else "none"))
    lead = lead or f"dataset '{name}' is not registered"
    return f"{lead} ({'; '.join(parts)}); {hint}"


TOOL_HINT = "pass --gt-json FILE --image-root DIR for data registered nowhere"


def run_folder_of_predictions(predictions: str) -> Optional[str]:
    """The training output folder of ``<run>/inference/<dataset>/<file>`` (where train_net's
    evaluation writes its predictions), when it holds a datasets.json; else None."""
    results_dir = os.path.dirname(os.path.abspath(predictions))
    inference = os.path.dirname(results_dir)
    run_dir = os.path.dirname(inference)
    if os.path.basename(inference) == "inference" and os.path.isfile(os.path.join(run_dir, DATASETS_FILE)):
        return run_dir
    return None


def tool_dataset(dataset: Optional[str], gt_json: Optional[str] = None, image_root: Optional[str] = None,
                 run_dirs: Sequence[str] = (), checkpoint_meta: Optional[Dict[str, Any]] = None,
                 lead: Optional[str] = None) -> str:
    """The registered dataset name a tool's ``--dataset NAME`` / ``--gt-json FILE --image-root
    DIR`` means: with ``gt_json`` that json, registered (as ``dataset`` if given); else
    ``dataset``, registered if needed as the runs in ``run_dirs`` (their datasets.json) or the
    checkpoint (``checkpoint_meta["datasets"]``) recorded it. ``lead``: how the message for an
    unknown name starts (default "unknown dataset 'NAME': not registered").

    Raises:
        DatasetError: one line: a missing file, or a name still unknown (with the closest names
            and the user's datasets).
    """
    if gt_json:
        return register_json_dataset(gt_json, image_root, dataset)
    if not dataset:
        raise DatasetError(f"no dataset: give --dataset NAME, or {TOOL_HINT}")
    recorded: List[str] = []
    sources = [(read_dataset_records(d), os.path.join(d, DATASETS_FILE)) for d in run_dirs if d]
    if checkpoint_meta and isinstance(checkpoint_meta.get("datasets"), dict):
        sources.append((checkpoint_meta["datasets"], "the checkpoint's metadata"))
    for records, source in sources:
        recorded += [n for n in records if n not in recorded]
        if dataset not in DatasetCatalog.list() and dataset in records:
            register_recorded_datasets({dataset: records[dataset]}, source, hint=TOOL_HINT)
    if dataset not in DatasetCatalog.list():
        lead = lead or f"unknown dataset '{dataset}': not registered"
        raise DatasetError(unknown_dataset_message(dataset, recorded, hint=TOOL_HINT, lead=lead))
    return dataset
