"""``model_best.pth``: the weights of the best evaluation of a run, by one metric.

After each evaluation whose metric (``train.best_checkpoint.metric``, a key of the flattened
evaluation results such as ``"bbox/AP"``) improves on the best so far, the run folder's
``model_best.pth`` is replaced (atomically, like every checkpoint) by the model weights, the EMA
weights when the run keeps them, and the run metadata with ``meta["best"] = {"metric", "value",
"iteration"}`` (``iteration``: the iterations trained when it was evaluated). It holds no
optimizer state, so it is a file for inference and export (``--run`` and ``Predictor.from_run``
use it when present), never one to ``--resume`` from, and ``max_to_keep`` does not count it.

detectron2's ``hooks.BestCheckpointer`` writes a full checkpoint through the checkpointer (so it
would be counted as ``last_checkpoint`` and hold the optimizer) and forgets the best of an
earlier part of a resumed run; here the best so far is read back from ``model_best.pth``.
"""
import logging
import math
import os
from typing import Any, Dict, Optional, Tuple

import torch

from detectron2.engine import HookBase

from detrex_lite.checkpoint.best import BEST_CHECKPOINT, format_metric, read_best

from .checkpoint import _named_tensors, atomic_write, non_finite_tensors

__all__ = ["BestCheckpointer"]

logger = logging.getLogger(__name__)

_MODES = ("max", "min")


class BestCheckpointer(HookBase):
    """Keeps ``<save_dir>/model_best.pth`` and the best and last value of one evaluation metric.

    Register it after the EvalHook (it reads what the evaluation put into the event storage) and
    only on the main process (the evaluation results are there).

    Args:
        checkpointer: the run's AtomicCheckpointer (its model, save_dir and checkpointables; the
            "trainer" checkpointable, i.e. optimizer and scheduler, is left out).
        metric: the key of the flattened evaluation results, e.g. "bbox/AP".
        mode: "max" (higher is better) or "min".
        save: write model_best.pth; False only tracks the values (for the closing summary).
    """

    def __init__(self, checkpointer, metric: str = "bbox/AP", mode: str = "max", save: bool = True):
        if mode not in _MODES:
            raise ValueError(f"train.best_checkpoint.mode={mode!r}: expected 'max' or 'min'")
        self.checkpointer = checkpointer
        self.metric = metric
        self.mode = mode
        self.save = save
        self.path = os.path.join(checkpointer.save_dir, BEST_CHECKPOINT)
        self.best: Optional[Tuple[float, int]] = None  # (value, iterations trained)
        self.last: Optional[Tuple[float, int]] = None
        self._seen_iteration: Optional[int] = None  # storage iteration of the last result read
        self._warned = False

    # ------------------------------------------------------------------ hook
    def before_train(self) -> None:
        if getattr(self.checkpointer, "resumed", ""):
            best = read_best(self.path)
            if best and best.get("metric") == self.metric and isinstance(best.get("value"), (int, float)):
                self.best = (float(best["value"]), int(best.get("iteration", 0)))
                logger.info(f"Best {self.metric} so far: {format_metric(self.best[0])} after {self.best[1]} iterations ({self.path})")
        elif os.path.isfile(self.path):
            # a fresh run in a folder used before: its model_best.pth is not this run's
            os.remove(self.path)
            logger.info(f"Removed {self.path} of an earlier run in this folder (a fresh run keeps its own best)")

    def after_step(self) -> None:
        self._check()

    def after_train(self) -> None:
        self._check()  # the evaluation at the end of training runs in the EvalHook's after_train

    # ------------------------------------------------------------------ logic
    def _check(self) -> None:
        storage = self.trainer.storage
        latest = storage.latest()
        found = latest.get(self.metric)
        if found is None:
            self._warn_if_evaluated(latest, storage.iter)
            return
        value, iteration = found
        if iteration == self._seen_iteration:
            return  # no new evaluation
        self._seen_iteration = iteration
        done = min(int(iteration) + 1, self.trainer.max_iter)  # iterations trained when evaluated
        value = float(value)
        if not math.isfinite(value):
            logger.warning(f"{self.metric} is {value} after {done} iterations: not a best")
            return
        self.last = (value, done)
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if not better:
            logger.info(
                f"{self.metric} {format_metric(value)} after {done} iterations; the best stays {format_metric(self.best[0])} "
                f"after {self.best[1]} iterations"
            )
            return
        previous = f" (was {format_metric(self.best[0])} after {self.best[1]})" if self.best else ""
        self.best = (value, done)
        if self.save and self._write(value, done):
            logger.info(f"New best {self.metric} {format_metric(value)} after {done} iterations{previous}: saved {self.path}")

    def _warn_if_evaluated(self, latest: Dict[str, Tuple[float, int]], iteration: int) -> None:
        results = sorted(name for name, (_, it) in latest.items() if "/" in name and it == iteration)
        if results and not self._warned:
            self._warned = True
            logger.warning(
                f"train.best_checkpoint.metric={self.metric!r} is not among the evaluation results "
                f"({', '.join(results[:8])}{', ...' if len(results) > 8 else ''}): no {BEST_CHECKPOINT} is kept"
            )

    def _write(self, value: float, done: int) -> bool:
        data: Dict[str, Any] = {"model": self.checkpointer.model.state_dict()}
        for name, obj in self.checkpointer.checkpointables.items():
            if name != "trainer":  # the optimizer and scheduler: not needed to use the weights
                data[name] = obj.state_dict()
        data["meta"] = {**data.get("meta", {}), "best": {"metric": self.metric, "value": value, "iteration": done}}
        bad, _ = non_finite_tensors(data)
        if bad:
            logger.warning(f"{BEST_CHECKPOINT} not written: {len(bad)} tensors hold NaN/inf ({', '.join(bad[:3])})")
            return False
        size = sum(t.numel() * t.element_size() for _, t in _named_tensors(data))
        atomic_write(self.path, lambda f: torch.save(data, f), size_hint=size)
        return True
