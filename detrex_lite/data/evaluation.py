"""COCO evaluation of a registered dataset: detectron2's ``COCOEvaluator`` with its annotation
json ready (the demo datasets generated first), its result files written whole, and scored against the annotations the loader
accepts (:func:`detrex_lite.data.coco.accepted_ground_truth`).

Kept apart from :mod:`detrex_lite.data.coco` (the loader, which the demo dataset uses) because it
needs both the loader and the demo dataset.
"""
import logging
import os

from detectron2.data import MetadataCatalog

from detrex_lite.errors import DatasetError

from .coco import accepted_ground_truth
from .demo_dataset import ensure_demo_files, is_demo_dataset

logger = logging.getLogger(__name__)

__all__ = ["build_coco_evaluator"]


def _coco_api(coco_dict):
    """A pycocotools COCO object from an in-memory dict (quietly: COCO() prints)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = coco_dict
        api.createIndex()
    return api


def _fill_missing_areas(coco_api, dataset_name: str) -> None:
    """COCOeval sorts ground truth into small/medium/large by ``area``, which COCO-style files
    written by other tools often leave out (a bbox-only dataset): those get w * h, in place, with
    one warning (COCOeval would otherwise stop with ``KeyError: 'area'`` after a whole training)."""
    missing = [a for a in coco_api.dataset.get("annotations", []) if "area" not in a]
    if not missing:
        return
    for annotation in missing:  # coco_api.anns holds the same dicts
        bbox = annotation.get("bbox") or [0, 0, 0, 0]
        annotation["area"] = float(bbox[2]) * float(bbox[3])
    logger.warning(
        "Dataset '%s': %d of %d annotations have no 'area'; evaluating with area = box width x height",
        dataset_name, len(missing), len(coco_api.dataset["annotations"]),
    )


def build_coco_evaluator(dataset_name, output_dir=None, **kwargs):
    """detectron2's ``COCOEvaluator`` for ``dataset_name`` with its result files written whole
    (:class:`~detrex_lite.data.whole_file_evaluator.WholeFileCOCOEvaluator`) and its annotation
    json ready.

    The demo datasets are generated here if needed (COCOEvaluator reads ``metadata.json_file``
    when it is built); for other datasets a missing json is reported by name. ``kwargs`` go to
    COCOEvaluator (e.g. ``max_dets_per_image``, ``tasks``).
    """
    from .whole_file_evaluator import WholeFileCOCOEvaluator  # detectron2.evaluation: only when evaluating

    if isinstance(dataset_name, (list, tuple)):
        if len(dataset_name) != 1:
            raise DatasetError(f"COCO evaluation takes one dataset name, got {list(dataset_name)}")
        dataset_name = dataset_name[0]
    meta = MetadataCatalog.get(dataset_name)
    if is_demo_dataset(dataset_name):
        ensure_demo_files(dataset_name)
    elif hasattr(meta, "json_file") and not os.path.isfile(meta.json_file):
        raise FileNotFoundError(
            f"Dataset '{dataset_name}': annotation file for evaluation not found: {meta.json_file}"
        )
    kwargs.setdefault("tasks", ("bbox",))
    evaluator = WholeFileCOCOEvaluator(dataset_name, output_dir=output_dir, **kwargs)
    _fill_missing_areas(evaluator._coco_api, dataset_name)
    if meta.get("annotations_validated", False):
        # Score against what training accepted: a box the loader dropped as invalid (zero size,
        # NaN, outside its image) would otherwise count as a miss of every model.
        coco_dict, num_dropped, num_clipped, dropped_ids = accepted_ground_truth(meta.json_file)
        if num_dropped or num_clipped:
            evaluator._coco_api = _coco_api(coco_dict)
            logger.warning(
                "Evaluating '%s' against the %d annotations the loader accepted: %d dropped as invalid "
                "(annotation ids %s%s), %d clipped to their image, as in training (%s)",
                dataset_name, len(coco_dict["annotations"]), num_dropped, dropped_ids[:10],
                " ..." if num_dropped > 10 else "", num_clipped, meta.json_file,
            )
    return evaluator
