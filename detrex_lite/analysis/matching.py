"""Which detection found which object, read from COCOeval's own per-image matching.

Nothing here matches boxes itself: :func:`match_detections` reads ``evalImgs`` (``dtMatches``,
``gtMatches``, ``dtIgnore``, ``gtIgnore``) of a COCOeval run at one IoU threshold, and
:func:`confusion_matrix` runs a second, class-agnostic COCOeval (``useCats=0``) on what the
first one left unmatched to find which class a wrong-class detection took an object for.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
from pycocotools.coco import COCO

from .coco_results import _coco_from_dict, quiet_cocoeval

ALL_AREAS = dict(areaRng=[[0, 1e10]], areaRngLbl=["all"])


def coco_iou_threshold(iou: float) -> float:
    """The value COCOeval's default ``iouThrs`` uses for ``iou`` (0.5, 0.55, ..., 0.95 come from
    np.linspace, so 0.75 is not exactly 0.75); another value is returned unchanged. Evaluating
    with the same float makes AP at that threshold identical to COCOeval's."""
    defaults = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    close = defaults[np.isclose(defaults, iou, atol=1e-9)]
    return float(close[0]) if close.size else float(iou)


@dataclass
class ImageMatches:
    """One image's detections and ground truth at one IoU threshold (COCO annotation ids; the
    detection ids are those of the predictions' COCO object)."""

    image_id: int
    matched_gt: List[int] = field(default_factory=list)  # found by a detection of its class
    missed_gt: List[int] = field(default_factory=list)
    true_dt: List[int] = field(default_factory=list)
    false_dt: List[int] = field(default_factory=list)  # wrong class, bad box, duplicate or background
    ignored_gt: List[int] = field(default_factory=list)  # crowd regions
    ignored_dt: List[int] = field(default_factory=list)  # detections matched to a crowd region

    @property
    def num_errors(self) -> int:
        """Missed plus false boxes."""
        return len(self.missed_gt) + len(self.false_dt)


def match_detections(coco_gt: COCO, coco_dt: COCO, iou: float = 0.5, max_dets: int = 100) -> Dict[int, ImageMatches]:
    """{image_id: ImageMatches} for every image of ``coco_gt``, from COCOeval's greedy
    per-class matching (highest score first, at most ``max_dets`` detections per image and
    class, all object sizes)."""
    evaluator = quiet_cocoeval(
        coco_gt, coco_dt, iouThrs=[coco_iou_threshold(iou)], maxDets=[max_dets], **ALL_AREAS
    )
    matches = {image_id: ImageMatches(image_id) for image_id in coco_gt.getImgIds()}
    for e in evaluator.evalImgs:
        if e is None:
            continue
        m = matches[e["image_id"]]
        _sort_ids(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], m.ignored_dt, m.true_dt, m.false_dt)
        _sort_ids(e["gtIds"], e["gtMatches"][0], e["gtIgnore"], m.ignored_gt, m.matched_gt, m.missed_gt)
    return matches


def _sort_ids(ids, partner_ids, ignore_flags, ignored: List[int], matched: List[int], unmatched: List[int]) -> None:
    """Appends each id of one image's detections (or ground truth) to ``ignored`` when COCOeval
    ignores it, else to ``matched`` when it has a partner (a partner id > 0), else to ``unmatched``."""
    for id_, partner, ignore in zip(ids, partner_ids, ignore_flags):
        if ignore:
            ignored.append(int(id_))
        elif partner > 0:
            matched.append(int(id_))
        else:
            unmatched.append(int(id_))


def confusion_matrix(coco_gt: COCO, coco_dt: COCO, iou: float = 0.5, max_dets: int = 100) -> Tuple[np.ndarray, List[str]]:
    """Counts of (ground-truth class, predicted class) at IoU ``iou``, background included.

    1. Per-class COCOeval matching (``match_detections``): a detection matched to an object of
       its class counts on the diagonal.
    2. The unmatched detections and objects go through a class-agnostic COCOeval
       (``useCats=0``, same IoU): a pair it matches is a class confusion (row = the object's
       class, column = the detection's class).
    3. What is still unmatched: detections in the background row, objects in the background
       column (missed). Crowd regions and detections matched to them are left out.

    Pass the predictions above a score threshold (``predictions_coco(..., score_threshold)``).

    Returns:
        (matrix (K + 1, K + 1) int64, names): rows ground truth, columns predictions, both in
        category id order with "background" last; ``matrix[K, K]`` is 0.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: i for i, c in enumerate(cat_ids)}
    names = [coco_gt.cats[c]["name"] for c in cat_ids] + ["background"]
    k = len(cat_ids)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    matches = match_detections(coco_gt, coco_dt, iou, max_dets)
    false_dt, missed_gt = [], []
    for m in matches.values():
        for dt_id in m.true_dt:
            c = index[coco_dt.anns[dt_id]["category_id"]]
            matrix[c, c] += 1
        false_dt += m.false_dt
        missed_gt += m.missed_gt

    def subset(coco: COCO, ids: List[int]) -> COCO:
        return _coco_from_dict(
            {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
             "annotations": [coco.anns[i] for i in ids]}
        )

    confused_dt, confused_gt = set(), set()
    if false_dt and missed_gt:
        agnostic = quiet_cocoeval(
            subset(coco_gt, missed_gt), subset(coco_dt, false_dt), useCats=0,
            iouThrs=[coco_iou_threshold(iou)], maxDets=[len(false_dt)], **ALL_AREAS,
        )
        for e in agnostic.evalImgs:
            if e is None:
                continue
            for dt_id, gt_id in zip(e["dtIds"], e["dtMatches"][0]):
                if gt_id > 0:
                    gt_id = int(gt_id)
                    row = index[coco_gt.anns[gt_id]["category_id"]]
                    matrix[row, index[coco_dt.anns[dt_id]["category_id"]]] += 1
                    confused_dt.add(dt_id)
                    confused_gt.add(gt_id)
    for dt_id in false_dt:
        if dt_id not in confused_dt:
            matrix[k, index[coco_dt.anns[dt_id]["category_id"]]] += 1
    for gt_id in missed_gt:
        if gt_id not in confused_gt:
            matrix[index[coco_gt.anns[gt_id]["category_id"]], k] += 1
    return matrix, names
