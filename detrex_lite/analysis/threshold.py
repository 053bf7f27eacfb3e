"""A score threshold for showing a detector's predictions: the one that maximises F1 at IoU 0.5.

Sigmoid-focal DETRs score lower than softmax detectors (the demo model's best val scores are
~0.4), so a fixed 0.5 draws nothing. Each evaluation therefore suggests a display threshold from
its own predictions: detections are matched to the ground truth greedily, per image and class, in
decreasing score order (a detection takes the unmatched object of its class with the highest IoU
>= 0.5, as COCOeval matches; a detection on a crowd region (intersection / detection area >= 0.5)
counts neither way; crowd objects are not counted as objects). With the matches fixed, keeping
the detections scoring >= t gives ``TP(t)`` correct ones out of ``N(t)``, and
``F1(t) = 2 TP(t) / (N(t) + G)`` over all classes pooled (``G`` objects). The suggestion is the
``t`` (one of the scores) of the highest F1; ties go to the higher threshold.

Greedy matching in score order never lets a lower-scored detection change what a higher-scored
one matched, so the matches at every threshold are a prefix of one matching: one sort and one
cumulative sum give F1 at every threshold.

Where the threshold comes from, for the tools: an explicit ``--threshold``, else the suggestion
stored in a checkpoint's ``meta["display_threshold"]`` (or computed from predictions and ground
truth), else :data:`DEFAULT_THRESHOLD` with a note saying so (:func:`choose_threshold`).
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD", "RULE", "DisplayThreshold", "ScoreThreshold", "best_f1_threshold", "box_iou_xywh",
    "choose_threshold", "greedy_match", "nothing_passes_message", "threshold_for_predictions",
]

RULE = "max F1 at IoU 0.5"
# For checkpoints without a stored suggestion. The trained demo models' suggestions are 0.2-0.3
# (sigmoid focal scores; 0.5 keeps nothing of the demo model), analyze_results used 0.3 already,
# and on a converted softmax-free COCO model 0.3 keeps the confident detections without clutter.
DEFAULT_THRESHOLD = 0.3


def box_iou_xywh(a: np.ndarray, b: np.ndarray, crowd: Optional[np.ndarray] = None) -> np.ndarray:
    """IoU of boxes ``a`` (N, 4) and ``b`` (M, 4), both absolute [x, y, w, h] (COCO's
    convention: no +1). Where ``crowd[j]`` is true the column is intersection / area of ``a``
    (COCO's overlap with a crowd region). Returns (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (a[:, 2] * a[:, 3])[:, None]
    area_b = (b[:, 2] * b[:, 3])[None, :]
    union = area_a + area_b - inter
    if crowd is not None:
        union = np.where(np.asarray(crowd, dtype=bool)[None, :], area_a, union)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def greedy_match(dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: Optional[np.ndarray] = None,
                 iou: float = 0.5) -> np.ndarray:
    """Greedy matching of one image's detections of one class, given in decreasing score order.

    Args:
        dt_boxes: (N, 4) absolute xywh, best score first.
        gt_boxes: (M, 4) absolute xywh objects of the same class and image.
        gt_crowd: (M,) bool, crowd regions (default: none).
    Returns:
        (N,) int8: 1 matched an object, 0 false, -1 on a crowd region (ignored).
    """
    n, m = len(dt_boxes), len(gt_boxes)
    out = np.zeros(n, dtype=np.int8)
    if n == 0 or m == 0:
        return out
    crowd = np.zeros(m, dtype=bool) if gt_crowd is None else np.asarray(gt_crowd, dtype=bool)
    ious = box_iou_xywh(dt_boxes, gt_boxes, crowd)
    taken = np.zeros(m, dtype=bool)
    for d in range(n):
        free = np.where(~crowd & ~taken, ious[d], -1.0)
        best = int(np.argmax(free)) if m else -1
        if free[best] >= iou:
            taken[best] = True
            out[d] = 1
        elif crowd.any() and ious[d][crowd].max() >= iou:
            out[d] = -1
    return out


@dataclass(frozen=True)
class DisplayThreshold:
    """The suggested threshold and what it gives: F1, precision and recall at IoU 0.5 over all
    classes, ``num_kept`` detections kept of ``num_predictions``, ``num_gt`` objects."""

    score: float
    f1: float
    precision: float
    recall: float
    num_kept: int
    num_predictions: int
    num_gt: int

    def to_meta(self, dataset: str, iteration: Optional[int] = None) -> Dict[str, Any]:
        """Plain values for ``checkpoint["meta"]["display_threshold"]``."""
        meta: Dict[str, Any] = {
            "score": float(self.score), "f1": round(float(self.f1), 4), "precision": round(float(self.precision), 4),
            "recall": round(float(self.recall), 4), "num_gt": int(self.num_gt), "dataset": str(dataset), "rule": RULE,
        }
        if iteration is not None:
            meta["iteration"] = int(iteration)
        return meta


def best_f1_threshold(ground_truth: Iterable[dict], predictions: Iterable[dict],
                      image_ids: Optional[Iterable[int]] = None, iou: float = 0.5) -> Optional[DisplayThreshold]:
    """The score threshold of the highest F1 (module docstring), from COCO-style dicts.

    Args:
        ground_truth: COCO annotations (``image_id``, ``category_id``, ``bbox`` absolute xywh,
            optional ``iscrowd``).
        predictions: COCO results (``image_id``, ``category_id``, ``bbox``, ``score``).
        image_ids: the images scored (default: those with at least one prediction: an
            evaluation on part of a dataset scores only the images it ran on).
        iou: the IoU a detection needs to count as correct.
    Returns:
        None when no detection is correct at any threshold (nothing to suggest).
    """
    predictions = list(predictions)
    images = set(image_ids) if image_ids is not None else {p["image_id"] for p in predictions}
    groups: Dict[tuple, List[list]] = {}
    num_gt = 0
    for ann in ground_truth:
        if ann["image_id"] not in images:
            continue
        crowd = bool(ann.get("iscrowd", 0))
        num_gt += not crowd
        groups.setdefault((ann["image_id"], ann["category_id"]), [[], []])
        groups[(ann["image_id"], ann["category_id"])][0].append((list(ann["bbox"]), crowd))
    by_group: Dict[tuple, List[int]] = {}
    for k, p in enumerate(predictions):
        if p["image_id"] in images:
            by_group.setdefault((p["image_id"], p["category_id"]), []).append(k)
    scores = np.asarray([float(p["score"]) for p in predictions], dtype=np.float64)
    outcome = np.full(len(predictions), -2, dtype=np.int8)  # -2: not scored (image left out)
    for key, indices in by_group.items():
        order = sorted(indices, key=lambda k: -scores[k])  # stable: ties keep the file order
        gt = groups.get(key, [[], []])[0]
        outcome[order] = greedy_match(
            np.asarray([predictions[k]["bbox"] for k in order], dtype=np.float64).reshape(-1, 4),
            np.asarray([b for b, _ in gt], dtype=np.float64).reshape(-1, 4),
            np.asarray([c for _, c in gt], dtype=bool), iou)
    counted = outcome >= 0
    if not counted.any():
        return None
    s = scores[counted]
    tp = outcome[counted].astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], np.cumsum(tp[order])
    kept = np.arange(1, len(s) + 1, dtype=np.float64)
    last_of_score = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every detection of its score
    s, tp, kept = s[last_of_score], tp[last_of_score], kept[last_of_score]
    f1 = 2 * tp / (kept + num_gt)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among ties
    if tp[best] == 0:
        return None
    return DisplayThreshold(
        score=float(s[best]), f1=float(f1[best]), precision=float(tp[best] / kept[best]),
        recall=float(tp[best] / num_gt) if num_gt else 0.0, num_kept=int(kept[best]),
        num_predictions=int(counted.sum()), num_gt=int(num_gt))


@dataclass(frozen=True)
class ScoreThreshold:
    """A threshold a tool uses and where it came from (``describe()`` prints both)."""

    value: float
    source: str  # e.g. "--threshold", "max F1 at IoU 0.5 on detrex_demo_val, iteration 1199, from x.pth"

    def describe(self) -> str:
        return f"score threshold {self.value:.3g} ({self.source})"


def stored_threshold(meta: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """``meta["display_threshold"]`` when it holds a usable score, else None."""
    stored = (meta or {}).get("display_threshold")
    if isinstance(stored, dict) and isinstance(stored.get("score"), (int, float)):
        return stored
    return None


def describe_stored(stored: Dict[str, Any], where: str) -> str:
    """``"max F1 at IoU 0.5 on <dataset>, iteration <it>, from <where>"``."""
    parts = [stored.get("rule", RULE)]
    if stored.get("dataset"):
        parts[0] += f" on {stored['dataset']}"
    if stored.get("iteration") is not None:
        parts.append(f"iteration {stored['iteration']}")
    return ", ".join(parts + [f"from {where}"])


def choose_threshold(explicit: Optional[float], meta: Optional[Dict[str, Any]], checkpoint: str,
                     flag: str = "--threshold") -> ScoreThreshold:
    """``explicit`` when given (``flag``), else the suggestion stored in ``meta`` (of the file
    ``checkpoint``), else :data:`DEFAULT_THRESHOLD`, each with its source."""
    if explicit is not None:
        return ScoreThreshold(float(explicit), flag)
    stored = stored_threshold(meta)
    if stored is not None:
        return ScoreThreshold(float(stored["score"]), describe_stored(stored, checkpoint or "the checkpoint"))
    where = checkpoint if checkpoint else "the model (no checkpoint)"
    return ScoreThreshold(DEFAULT_THRESHOLD, f"no threshold stored in {where}; default")


def nothing_passes_message(threshold: float, best: Optional[float], flag: str = "--threshold") -> str:
    """``"no prediction reaches the threshold 0.23 (highest score 0.19); lower it with --threshold"``."""
    highest = "no predictions at all" if best is None else f"highest score {best:.3g}"
    return f"no prediction reaches the threshold {threshold:.3g} ({highest}); lower it with {flag}"


def threshold_for_predictions(explicit: Optional[float], ground_truth: Iterable[dict], predictions: List[dict],
                              predictions_file: str, dataset: str, flag: str = "--threshold") -> ScoreThreshold:
    """For tools that read a COCO results file and have the ground truth: ``explicit`` when
    given, else the suggestion computed from the predictions and the ground truth (what the
    evaluation that wrote the file stored), else :data:`DEFAULT_THRESHOLD` when no prediction
    is correct."""
    if explicit is not None:
        return ScoreThreshold(float(explicit), flag)
    found = best_f1_threshold(ground_truth, predictions)
    if found is None:
        return ScoreThreshold(DEFAULT_THRESHOLD, f"no prediction in {predictions_file} matches an object; default")
    return ScoreThreshold(found.score, f"{RULE} of {predictions_file} on {dataset}")
