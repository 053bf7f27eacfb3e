"""Ground truth of a registered dataset and a COCO results file, as pycocotools COCO objects.

Predictions are the standard COCO results json that detectron2's COCOEvaluator (and
tools/train_net.py) writes as ``<output_dir>/inference/<dataset>/coco_instances_results.json``:
a list of ``{"image_id", "category_id", "bbox": [x, y, w, h] absolute pixels, "score"}`` with the
dataset's own category ids.
"""
import contextlib
import copy
import io
import json
import logging
import math
import os
from typing import Dict, List, Optional

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from detrex_lite.errors import AnalysisError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")


def _registered(dataset_name: str) -> None:
    from detectron2.data import DatasetCatalog

    import detrex_lite.data  # noqa: F401  (registers the demo datasets)

    from detrex_lite.data.registration import TOOL_HINT, unknown_dataset_message

    if dataset_name not in DatasetCatalog.list():
        raise AnalysisError(unknown_dataset_message(
            dataset_name, hint=TOOL_HINT, lead=f"unknown dataset '{dataset_name}': not registered"))


def results_dataset(predictions: str, dataset: Optional[str], gt_json: Optional[str] = None,
                    image_root: Optional[str] = None) -> str:
    """The registered name of the ground truth for ``predictions``: ``gt_json`` registered (as
    ``dataset`` if given), or ``dataset``, registered if needed as the training run whose
    ``inference/`` folder holds ``predictions`` recorded it (its datasets.json).

    Raises:
        AnalysisError: a missing file or an unknown name (the closest names and the user's datasets).
    """
    import detrex_lite.data  # noqa: F401  (registers the demo datasets)
    from detrex_lite.data.registration import run_folder_of_predictions, tool_dataset
    from detrex_lite.errors import DatasetError

    try:
        return tool_dataset(dataset, gt_json, image_root, run_dirs=[run_folder_of_predictions(predictions)])
    except (DatasetError, FileNotFoundError) as e:
        raise AnalysisError(str(e)) from None


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def dataset_coco_gt(dataset_name: str) -> COCO:
    """The ground truth of a registered detectron2 dataset as a pycocotools COCO object.

    Uses the metadata's ``json_file`` when there is one (COCO, datasets registered with
    ``register_coco_dataset``, the demo datasets, which are generated here if needed); otherwise
    converts the dataset dicts with detectron2's ``convert_to_coco_dict`` (category ids mapped
    back to the dataset's own ids), as COCOEvaluator does.

    Raises:
        AnalysisError: the dataset is not registered, or its json file is missing.
    """
    from detectron2.data import MetadataCatalog

    from detrex_lite.data.demo_dataset import ensure_demo_files, is_demo_dataset

    _registered(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    if is_demo_dataset(dataset_name):
        ensure_demo_files(dataset_name)
    json_file = meta.get("json_file", None)
    if json_file:
        if not os.path.isfile(json_file):
            raise AnalysisError(f"dataset '{dataset_name}': annotation file not found: {json_file}")
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(json_file)
    from detectron2.data.datasets.coco import convert_to_coco_dict

    return _coco_from_dict(convert_to_coco_dict(dataset_name))


def dataset_image_files(dataset_name: str) -> Dict[int, str]:
    """{image_id: image file path} of a registered dataset (from its dataset dicts)."""
    from detectron2.data import DatasetCatalog

    _registered(dataset_name)
    return {d["image_id"]: d["file_name"] for d in DatasetCatalog.get(dataset_name)}


def load_predictions(path: str, coco_gt: COCO) -> List[dict]:
    """Reads and checks a COCO results json against the ground truth it is evaluated on.

    Returns:
        the list of results, each with image_id, category_id, bbox [x, y, w, h] (absolute
        pixels) and score.

    Raises:
        AnalysisError: one line naming the file and the first entry at fault (missing file, not
        a json list, missing key, non-finite number, image or category id not in the dataset).
    """
    if not os.path.isfile(path):
        raise AnalysisError(f"predictions file not found: {path}")
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(results, list):
        raise AnalysisError(f"{path}: expected a list of COCO results, got a {type(results).__name__}")
    image_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in _RESULT_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise AnalysisError(f"{path}: entry {i} has no {', '.join(missing)} (COCO results need {_RESULT_KEYS})")
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4):
            raise AnalysisError(f"{path}: entry {i}: bbox must be [x, y, w, h], got {box!r}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box + [r["score"]]):
            raise AnalysisError(f"{path}: entry {i}: non-finite bbox or score {box!r}, {r['score']!r}")
        if r["image_id"] not in image_ids:
            raise AnalysisError(
                f"{path}: entry {i}: image_id {r['image_id']!r} is not in the dataset "
                f"({len(image_ids)} images): predictions of another dataset?"
            )
        if r["category_id"] not in cat_ids:
            raise AnalysisError(
                f"{path}: entry {i}: category_id {r['category_id']!r} is not one of the dataset's "
                f"category ids {sorted(cat_ids)}"
            )
    covered = len({r["image_id"] for r in results})
    if covered < len(image_ids):
        logger.warning(
            f"{path}: predictions for {covered} of {len(image_ids)} images; the others count as "
            "images where every object was missed"
        )
    return results


def predictions_coco(coco_gt: COCO, results: List[dict], score_threshold: Optional[float] = None) -> COCO:
    """The results (optionally those with score >= score_threshold) as a COCO object for
    COCOeval, as ``coco_gt.loadRes`` builds it for boxes (area = w * h, ids from 1, not crowd);
    unlike loadRes it accepts an empty list."""
    annotations = []
    for r in results:
        if score_threshold is not None and r["score"] < score_threshold:
            continue
        x, y, w, h = r["bbox"]
        ann = {k: r[k] for k in _RESULT_KEYS}
        ann.update(bbox=[x, y, w, h], area=w * h, iscrowd=0, id=len(annotations) + 1)
        annotations.append(ann)
    dataset = {
        "images": coco_gt.dataset["images"],
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": annotations,
    }
    return _coco_from_dict(dataset)


def quiet_cocoeval(coco_gt: COCO, coco_dt: COCO, **params) -> COCOeval:
    """A bbox COCOeval with ``params`` set (e.g. iouThrs, maxDets, catIds, useCats), evaluated
    and accumulated, without pycocotools' prints."""
    import numpy as np

    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    for key, value in params.items():
        if not hasattr(evaluator.params, key):
            raise AttributeError(f"COCOeval params have no '{key}'")
        setattr(evaluator.params, key, np.asarray(value) if key == "iouThrs" else value)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator
