"""Event writers for training: one short progress line per logging period on the terminal (and
in log.txt), every scalar in metrics.json (always valid JSON) and TensorBoard."""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from detectron2.utils.events import get_event_storage

from detrex_lite.utils.json_io import dumps

__all__ = ["ProgressPrinter", "StrictJSONWriter", "default_writers", "final_layer_terms", "progress_line"]

logger = logging.getLogger(__name__)

# At most this many loss terms are named on the line (each "class 0.612" is ~12 characters).
_MAX_TERMS = 5


class StrictJSONWriter(JSONWriter):
    """detectron2's JSONWriter (one JSON object per line, appended), with NaN/inf written as null.

    A COCO evaluation returns NaN for metrics with no ground truth (APl on the demo data);
    detectron2's writer puts a bare ``NaN`` into metrics.json, which JSON readers refuse.
    """

    def write(self) -> None:
        storage = get_event_storage()
        rows = {}
        for name, (value, iteration) in storage.latest_with_smoothing_hint(self._window_size).items():
            if iteration > self._last_write:  # only what has not been written yet
                rows.setdefault(iteration, {})[name] = value
        if rows:
            self._last_write = max(rows)
        for iteration in sorted(rows):
            self._file_handle.write(dumps({**rows[iteration], "iteration": iteration}, sort_keys=True) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError):
            pass


def final_layer_terms(names: Sequence[str]) -> List[str]:
    """The loss terms of the final prediction stage, from the names alone: the loss names
    (``loss_*``) that are not another loss name plus a suffix (``loss_class_0``, ``loss_class_enc``,
    ``loss_class_dn_1`` extend ``loss_class``), in their order.

    >>> final_layer_terms(["loss_class", "loss_bbox", "loss_class_0", "loss_bbox_0", "loss_bbox_enc"])
    ['loss_class', 'loss_bbox']
    """
    losses = [n for n in names if n.startswith("loss_")]
    return [n for n in losses if not any(n != other and n.startswith(other + "_") for other in losses)]


def progress_line(
    iteration: int,
    max_iter: Optional[int],
    total_loss: Optional[float],
    terms: Dict[str, float],
    lr: Optional[float],
    seconds_per_iter: Optional[float],
    eta: str = "",
    max_mem_gb: Optional[float] = None,
) -> str:
    """``iter 120/1200  loss 4.21 (class 0.61 bbox 0.32 giou 0.71)  lr 1.0e-04  0.421 s/it  eta 0:07:31``.

    Args:
        iteration: iterations done (1-based: the line after the first iteration says ``iter 1``).
        terms: {loss name: value} of the final stage; names lose their ``loss_`` prefix.
        seconds_per_iter: average time of one iteration (s); eta: "H:MM:SS" or "".
        max_mem_gb: peak GPU memory (GiB), shown when given.
    """
    parts = [f"iter {iteration}/{max_iter}" if max_iter else f"iter {iteration}"]
    if total_loss is not None:
        named = " ".join(f"{name[len('loss_'):]} {value:.2f}" for name, value in list(terms.items())[:_MAX_TERMS])
        parts.append(f"loss {total_loss:.2f}" + (f" ({named})" if named else ""))
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    if seconds_per_iter is not None:
        parts.append(f"{seconds_per_iter:.3g} s/it")
    if eta:
        parts.append(f"eta {eta}")
    if max_mem_gb is not None:
        parts.append(f"mem {max_mem_gb:.1f}G")
    return "  ".join(parts)


class ProgressPrinter(CommonMetricPrinter):
    """One short line per logging period: iterations done, the total loss and the final stage's
    terms (median over the last ``window_size`` iterations, as detectron2's printer), lr, time per
    iteration, ETA (and the peak memory on a GPU). Every other scalar (the earlier stages'
    terms, data time, grad norm) is in metrics.json and TensorBoard.

    detectron2's CommonMetricPrinter, whose ETA it keeps (with ``eta_seconds`` stored for
    metrics.json as before), prints every loss term: ~370 characters a line for 3 decoder layers.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self.logger = logger

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:  # after training: nothing new about its progress
            return
        histories = storage.histories()

        def median(name):
            return histories[name].median(storage.count_samples(name, self._window_size))

        total = median("total_loss") if "total_loss" in histories else None
        terms = {name: median(name) for name in final_layer_terms(list(histories))}
        lr = histories["lr"].latest() if "lr" in histories else None
        seconds = histories["time"].global_avg() if "time" in histories else None
        eta = (self._get_eta(storage) or "").replace(" days, ", "d ").replace(" day, ", "d ")
        memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        self.logger.info(progress_line(iteration + 1, self._max_iter, total, terms, lr, seconds, eta, memory))


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """The progress line, metrics.json (every scalar, strict JSON) and TensorBoard."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        ProgressPrinter(max_iter),
        StrictJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
