"""detectron2's ``COCOEvaluator`` with its result files written whole (built by
:func:`detrex_lite.data.build_coco_evaluator`)."""
import copy
import itertools
import json
import os
from collections import OrderedDict

import torch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from detrex_lite.utils.files import write_atomically

__all__ = ["WholeFileCOCOEvaluator"]

# The end of the one-line error when a result file cannot be written (e.g. a full disk).
_WRITE_ADVICE = "free some space and evaluate again"


class WholeFileCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` whose result files are written whole.

    The base class writes ``instances_predictions.pth`` and ``coco_instances_results.json`` in
    place: a full disk left a truncated file and a traceback. Here each file goes to a temporary
    file beside it, renamed once complete (:func:`detrex_lite.utils.files.write_atomically`); a
    failed write raises :class:`~detrex_lite.errors.OutputWriteError`, one line naming the file
    and the free space, and leaves the previous file as it was. The files and their contents are
    the base class's (the predictions before the category ids are mapped back to the dataset's;
    the COCO results with the dataset's ids).

    Args: as ``COCOEvaluator``; ``output_dir``: where the two files go (None: nowhere).
    """

    def __init__(self, dataset_name, output_dir=None, **kwargs):
        super().__init__(dataset_name, output_dir=output_dir, **kwargs)
        # The base class writes into _output_dir in place; it gets none, the files are written here.
        self._files_dir, self._output_dir = output_dir, None

    def evaluate(self, img_ids=None):
        """detectron2's ``COCOEvaluator.evaluate`` with whole-file writes (class docstring).

        Returns:
            {task: {metric: value}} on the main process, {} elsewhere.

        Raises:
            OutputWriteError: a result file cannot be written.
        """
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        if self._files_dir:
            os.makedirs(self._files_dir, exist_ok=True)
            write_atomically(
                os.path.join(self._files_dir, "instances_predictions.pth"), lambda f: torch.save(predictions, f),
                advice=_WRITE_ADVICE,
            )
        self._results = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            coco_results = self._results_with_dataset_ids(predictions) if self._files_dir else None
            if coco_results is not None:
                path = os.path.join(self._files_dir, "coco_instances_results.json")
                self._logger.info(f"Saving results to {path}")
                write_atomically(path, lambda f: f.write(json.dumps(coco_results).encode()), advice=_WRITE_ADVICE)
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _results_with_dataset_ids(self, predictions):
        """The entries of ``coco_instances_results.json``: every image's results (copies) with the
        dataset's category ids, as ``_eval_predictions`` maps them before it evaluates (COCOeval
        then adds fields to the dicts it is given, so the file is written before). None when a
        class index is not among the dataset's: ``_eval_predictions`` reports it."""
        results = [dict(r) for r in itertools.chain(*[p["instances"] for p in predictions])]
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            to_dataset = {v: k for k, v in self._metadata.thing_dataset_id_to_contiguous_id.items()}
            if any(r["category_id"] not in to_dataset for r in results):
                return None
            for r in results:
                r["category_id"] = to_dataset[r["category_id"]]
        return results
