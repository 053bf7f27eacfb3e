"""Where a diverging run left its healthy range, so that the "last good checkpoint" of a
non-finite stop is one written before the divergence, not merely the newest finite one.

A run that diverges usually does not turn NaN at once: the loss and the gradient norm grow for
tens of iterations, and the checkpoints written meanwhile are finite but already exploded
(weights of 1e6 where a healthy run has ~5). Resuming from one of those fails again at once.
:class:`DivergenceWatch` keeps the median of the recent in-range values of the total loss and of
the gradient norm; an iteration whose loss or gradient norm is over ``factor`` times its median
starts an *excursion*, which ends after ``recover_after`` in-range iterations in a row. The
trainer names, and tags as ``last_checkpoint``, the newest checkpoint written before the excursion
that ended in the non-finite value began.
"""
import collections
import math
import statistics
from typing import Deque, Optional

__all__ = ["DivergenceWatch"]


class DivergenceWatch:
    """Running range of the loss and gradient norm (see the module docstring).

    Args:
        window: how many recent in-range values the medians are taken over.
        warmup: values needed before anything is judged out of range.
        factor: a value over ``factor`` x its median is out of range.
        recover_after: in-range iterations in a row that end an excursion.
    """

    def __init__(self, window: int = 50, warmup: int = 10, factor: float = 10.0, recover_after: int = 10):
        self.factor = factor
        self.warmup = warmup
        self.recover_after = recover_after
        self._values = {"loss": collections.deque(maxlen=window), "grad_norm": collections.deque(maxlen=window)}
        self.excursion_start: Optional[int] = None  # first out-of-range iteration of the current excursion
        self._in_range_streak = 0

    def _out_of_range(self, name: str, value: Optional[float]) -> bool:
        if value is None:
            return False
        if not math.isfinite(value):
            return True
        seen: Deque[float] = self._values[name]
        return len(seen) >= self.warmup and value > self.factor * statistics.median(seen)

    def observe(self, iteration: int, loss: float, grad_norm: Optional[float] = None) -> None:
        """Record one iteration's total loss and (when clipping computes it) gradient norm."""
        out = self._out_of_range("loss", loss) or self._out_of_range("grad_norm", grad_norm)
        if out:
            self._in_range_streak = 0
            if self.excursion_start is None:
                self.excursion_start = iteration
            return
        self._values["loss"].append(loss)
        if grad_norm is not None:
            self._values["grad_norm"].append(grad_norm)
        if self.excursion_start is not None:
            self._in_range_streak += 1
            if self._in_range_streak >= self.recover_after:
                self.excursion_start = None
                self._in_range_streak = 0
