"""The COCO error analysis (Hoiem et al., ECCV 2012, as the COCO API's ``analyze``) and the
per-class AP table, both computed by pycocotools' COCOeval.

Precision-recall curves at 100 detections per image, each one removing one more kind of error:

=====  =========================================================================================
C75    PR at IoU 0.75 (COCO's AP75)
C50    PR at IoU 0.50 (COCO's AP50)
Loc    PR at IoU 0.10: localisation errors ignored, duplicate detections still count as false
Sim    PR at IoU 0.10 after removing confusions with other classes of the same supercategory
Oth    PR at IoU 0.10 after removing confusions with any other class
BG     PR after also removing all background false positives (precision 1 up to the recall
       reached by Oth)
FN     PR after removing everything but missed objects (precision 1 at every recall)
=====  =========================================================================================

The area under each curve is the AP that fixing that error type would reach. Sim and Oth are
computed as the COCO API does: for class k, the objects of the other classes (of k's
supercategory for Sim) become crowd regions of class k, so that a class-k detection on one of
them is ignored instead of counted as false, and the evaluation runs at IoU 0.1.
"""
import contextlib
import io
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
from pycocotools.coco import COCO

from .coco_results import _coco_from_dict, quiet_cocoeval
from .matching import coco_iou_threshold

ERROR_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")
AREA_RANGES = [[0, 1e5**2], [0, 32**2], [32**2, 96**2], [96**2, 1e5**2]]  # COCOeval's defaults
MAX_DETS = 100


@dataclass
class ErrorAnalysis:
    """PR curves of the seven error types.

    Attributes:
        precision: (7, R, K, 4) precision at the R = 101 recall levels ``recall``, per error type
            (ERROR_TYPES order), class (category id order) and area (AREAS order); NaN where a
            class has no (non-crowd) object of that size.
        recall: (R,) 0.00, 0.01, ..., 1.00.
        class_names: K names; category_ids: K dataset category ids.
        num_gt: (K, 4) non-crowd objects per class and area, as COCOeval counts them.
    """

    precision: np.ndarray
    recall: np.ndarray
    class_names: List[str]
    category_ids: List[int]
    num_gt: np.ndarray

    def ap(self) -> np.ndarray:
        """(7, K, 4) AP in percent per error type, class and area (NaN where no object)."""
        return 100.0 * self.precision.mean(axis=1)

    def overall_ap(self) -> np.ndarray:
        """(7, 4) AP in percent per error type and area, averaged over the classes that have
        objects of that size, as COCOeval averages (C75/C50 at area "all" are COCO's AP75/AP50)."""
        ap = self.ap()
        out = np.full(ap.shape[::2], np.nan)
        for a in range(ap.shape[2]):
            valid = ~np.isnan(ap[0, :, a])
            if valid.any():
                out[:, a] = ap[:, valid, a].mean(axis=1)
        return out

    def overall_curves(self) -> np.ndarray:
        """(7, R, 4) precision averaged over the classes with objects of that size (NaN if none)."""
        out = np.full((self.precision.shape[0], self.precision.shape[1], self.precision.shape[3]), np.nan)
        for a in range(self.precision.shape[3]):
            valid = ~np.isnan(self.precision[0, 0, :, a])
            if valid.any():
                out[:, :, a] = self.precision[:, :, valid, a].mean(axis=2)
        return out

    def table(self) -> List[dict]:
        """Rows {"class", "area", "num_gt", C75 .. FN (AP %)}: the overall rows ("all classes")
        first, then each class; areas without objects have None values."""

        def row(name, area_index, values, num_gt):
            entry = {"class": name, "area": AREAS[area_index], "num_gt": int(num_gt)}
            for t, value in zip(ERROR_TYPES, values):
                entry[t] = None if np.isnan(value) else round(float(value), 3)
            return entry

        ap, overall = self.ap(), self.overall_ap()
        rows = [row("all classes", a, overall[:, a], self.num_gt[:, a].sum()) for a in range(len(AREAS))]
        for k, name in enumerate(self.class_names):
            rows += [row(name, a, ap[:, k, a], self.num_gt[k, a]) for a in range(len(AREAS))]
        return rows


def _precision(evaluator, t: int) -> np.ndarray:
    """(R, K, A) precision at IoU index t and the last maxDets, -1 replaced by NaN."""
    p = evaluator.eval["precision"][t, :, :, :, -1].astype(np.float64)
    p[p < 0] = np.nan
    return p


def _relabelled_gt(coco_gt: COCO, cat_id: int, confusable: set) -> COCO:
    """Ground truth where the objects of the classes in ``confusable`` become crowd regions of
    class ``cat_id`` (a detection on them is ignored, not false)."""
    annotations = []
    for ann in coco_gt.dataset["annotations"]:
        if ann["category_id"] in confusable:
            ann = dict(ann, category_id=cat_id, iscrowd=1)
        annotations.append(ann)
    return _coco_from_dict(
        {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": annotations}
    )


def error_analysis(coco_gt: COCO, coco_dt: COCO) -> ErrorAnalysis:
    """Runs the seven-curve COCO error analysis (module docstring) with COCOeval.

    One COCOeval at IoU 0.75, 0.5 and 0.1 over all classes gives C75, C50 and Loc; per class, two
    more at IoU 0.1 restricted to that class give Sim and Oth. A class without a supercategory
    is its own supercategory (its Sim equals Loc).
    """
    areas = dict(areaRng=AREA_RANGES, areaRngLbl=list(AREAS), maxDets=[MAX_DETS])
    cat_ids = sorted(coco_gt.getCatIds())
    base = quiet_cocoeval(
        coco_gt, coco_dt, iouThrs=[coco_iou_threshold(0.75), coco_iou_threshold(0.5), 0.1], catIds=cat_ids, **areas
    )
    recall = np.asarray(base.params.recThrs)
    precision = np.full((len(ERROR_TYPES), len(recall), len(cat_ids), len(AREAS)), np.nan)
    for t in range(3):
        precision[t] = _precision(base, t)
    supercategory = {c: coco_gt.cats[c].get("supercategory") for c in cat_ids}
    for k, cat_id in enumerate(cat_ids):
        others = set(cat_ids) - {cat_id}
        same_super = {c for c in others if supercategory[cat_id] is not None and supercategory[c] == supercategory[cat_id]}
        for t, confusable in ((3, same_super), (4, others)):
            evaluator = quiet_cocoeval(
                _relabelled_gt(coco_gt, cat_id, confusable), coco_dt, iouThrs=[0.1], catIds=[cat_id], **areas
            )
            precision[t, :, k] = _precision(evaluator, 0)[:, 0]
    valid = ~np.isnan(precision[1])
    precision[5] = np.where(valid, (np.nan_to_num(precision[4]) > 0).astype(np.float64), np.nan)
    precision[6] = np.where(valid, 1.0, np.nan)
    num_gt = np.zeros((len(cat_ids), len(AREAS)), dtype=np.int64)
    for e in base.evalImgs:
        if e is not None:
            num_gt[cat_ids.index(e["category_id"]), AREAS.index(_area_label(e["aRng"]))] += int(
                np.sum(np.logical_not(e["gtIgnore"]))
            )
    return ErrorAnalysis(
        precision=precision, recall=recall, class_names=[coco_gt.cats[c]["name"] for c in cat_ids],
        category_ids=cat_ids, num_gt=num_gt,
    )


def _area_label(area_range) -> str:
    return AREAS[[list(r) for r in AREA_RANGES].index(list(area_range))]


def per_class_ap(coco_gt: COCO, coco_dt: COCO) -> Dict[str, object]:
    """The standard COCO evaluation (default COCOeval parameters), overall and per class.

    Returns:
        {"overall": {AP, AP50, AP75, APs, APm, APl} (COCOeval's stats x 100),
         "per_class": [{"class", "category_id", "num_gt" (non-crowd objects), "num_predictions",
         AP, AP50, AP75, APs, APm, APl}] in category id order}; NaN (no object of a size) as None.
    """
    evaluator = quiet_cocoeval(coco_gt, coco_dt)
    with contextlib.redirect_stdout(io.StringIO()):  # summarize prints COCO's table
        evaluator.summarize()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    stats = evaluator.stats[:6]
    overall = {k: (None if v < 0 else round(100.0 * float(v), 3)) for k, v in zip(keys, stats)}
    precision = evaluator.eval["precision"]  # (T, R, K, A, M)
    iou_thrs = list(evaluator.params.iouThrs)
    t50, t75 = iou_thrs.index(coco_iou_threshold(0.5)), iou_thrs.index(coco_iou_threshold(0.75))
    cat_ids = list(evaluator.params.catIds)

    def mean(p):
        p = p[p > -1]
        return None if p.size == 0 else round(100.0 * float(p.mean()), 3)

    rows = []
    for k, cat_id in enumerate(cat_ids):
        num_gt = len(coco_gt.getAnnIds(catIds=[cat_id], iscrowd=False))
        rows.append({
            "class": coco_gt.cats[cat_id]["name"], "category_id": int(cat_id), "num_gt": num_gt,
            "num_predictions": len(coco_dt.getAnnIds(catIds=[cat_id])),
            "AP": mean(precision[:, :, k, 0, -1]), "AP50": mean(precision[t50, :, k, 0, -1]),
            "AP75": mean(precision[t75, :, k, 0, -1]), "APs": mean(precision[:, :, k, 1, -1]),
            "APm": mean(precision[:, :, k, 2, -1]), "APl": mean(precision[:, :, k, 3, -1]),
        })
    return {"overall": overall, "per_class": rows}
