"""Looking at data and results: ground truth and predictions of a registered dataset as COCO
objects, per-image matches and the COCO error analysis from pycocotools' COCOeval, confusion
matrices and per-class AP (used by ``detrex_lite.apps``: analyze_results, visualize_results);
the pictures are ``detrex_lite.visualization``."""
from .coco_results import (
    AnalysisError,
    dataset_coco_gt,
    dataset_image_files,
    load_predictions,
    predictions_coco,
    quiet_cocoeval,
    results_dataset,
)
from .matching import ImageMatches, confusion_matrix, match_detections
from .error_analysis import ERROR_TYPES, ErrorAnalysis, error_analysis, per_class_ap

__all__ = [
    "AnalysisError",
    "ERROR_TYPES",
    "ErrorAnalysis",
    "ImageMatches",
    "confusion_matrix",
    "dataset_coco_gt",
    "dataset_image_files",
    "error_analysis",
    "load_predictions",
    "match_detections",
    "per_class_ap",
    "predictions_coco",
    "quiet_cocoeval",
    "results_dataset",
]
