"""The display threshold each evaluation suggests (:mod:`detrex_lite.analysis.threshold`), kept
where the tools find it: in the metadata of the checkpoints written after that evaluation
(``checkpoint["meta"]["display_threshold"]``) and as ``display_threshold.json`` beside the
evaluation's ``coco_instances_results.json``.

:class:`EvalHook` evaluates at the last iteration in ``after_step`` (detectron2's waits for
``after_train``), so that, registered before the checkpointer, the evaluation at the end comes
before ``model_final.pth`` is written and that file holds what the final evaluation found.
"""
import json
import logging
import os
from typing import Any, Dict, Optional

from detectron2.engine import hooks

from detrex_lite.analysis.threshold import best_f1_threshold
from detrex_lite.utils import json_io

__all__ = ["EvalHook", "THRESHOLD_FILE", "record_display_threshold"]

logger = logging.getLogger(__name__)

THRESHOLD_FILE = "display_threshold.json"


def record_display_threshold(evaluator: Any, output_dir: Optional[str], dataset: Optional[str] = None,
                             iteration: Optional[int] = None,
                             run_meta: Optional[Any] = None) -> Optional[Dict[str, Any]]:
    """After an evaluation (main process): the suggested display threshold of the predictions it
    wrote (``output_dir/coco_instances_results.json``) against the evaluator's ground truth, logged,
    written to ``output_dir/display_threshold.json`` and, with ``run_meta`` (the run's
    :class:`~detrex_lite.checkpoint.run.RunMetadata`), put into the metadata of the next
    checkpoints. ``dataset`` (the name stored) defaults to the evaluator's dataset. Returns the
    stored dict, or None when there is nothing to suggest (no predictions file, an evaluator
    without COCO ground truth, or no correct detection)."""
    coco_api = getattr(evaluator, "_coco_api", None)
    results_file = os.path.join(output_dir, "coco_instances_results.json") if output_dir else ""
    if coco_api is None or not os.path.isfile(results_file):
        logger.info("No display threshold suggested: the evaluation wrote no COCO results with ground truth")
        return None
    if dataset is None:
        dataset = getattr(getattr(evaluator, "_metadata", None), "name", None) or os.path.basename(output_dir)
    with open(results_file) as f:
        predictions = json.load(f)
    found = best_f1_threshold(coco_api.dataset.get("annotations", []), predictions)
    if found is None:
        # What an earlier evaluation suggested is not about these predictions any more.
        if os.path.isfile(os.path.join(output_dir, THRESHOLD_FILE)):
            os.remove(os.path.join(output_dir, THRESHOLD_FILE))
        if run_meta is not None:
            run_meta.meta.pop("display_threshold", None)
        logger.info(f"No display threshold suggested: no prediction in {results_file} matches an object at IoU 0.5")
        return None
    stored = found.to_meta(dataset, iteration)
    stored["num_predictions"] = len(predictions)
    logger.info(
        f"Suggested display threshold: score >= {found.score:.3g} (max F1 {found.f1:.3f} at IoU 0.5 on {dataset}: "
        f"precision {found.precision:.3f}, recall {found.recall:.3f}, {found.num_kept} of {found.num_predictions} "
        "predictions kept)"
    )
    json_io.dump(stored, os.path.join(output_dir, THRESHOLD_FILE), indent=1)
    if run_meta is not None:
        run_meta.meta["display_threshold"] = stored
    return stored


class EvalHook(hooks.EvalHook):
    """detectron2's EvalHook, evaluating at the last iteration in ``after_step`` instead of
    ``after_train``: registered before the PeriodicCheckpointer, every evaluation precedes the
    checkpoint of its iteration, ``model_final.pth`` included. The final evaluation's metrics
    keep detectron2's label (``iteration`` = max_iter in metrics.json and TensorBoard)."""

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._eval_after_train and next_iter == self.trainer.max_iter:
            storage = self.trainer.storage
            storage.iter = self.trainer.max_iter  # as detectron2's after_train sets it
            try:
                self._do_eval()
            finally:
                storage.iter = self.trainer.iter  # this iteration's writers still report it
        elif self._period > 0 and next_iter % self._period == 0:
            self._do_eval()

    def after_train(self) -> None:
        del self._func  # a closure holding the trainer (as detectron2's after_train drops it)
