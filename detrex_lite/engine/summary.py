"""The block a training run ends with: how it ended, its best and last evaluation, where its
checkpoints are, how long it took."""
import datetime
import logging
import os
import sys
import time
from typing import List, Optional

from detectron2.engine import HookBase

from detrex_lite.checkpoint.best import format_metric

from .errors import TrainingInterrupted

__all__ = ["TrainingSummary", "format_duration"]

logger = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class TrainingSummary(HookBase):
    """Logs the closing summary after training (register it last, on the main process):

    ::

        Training done: 1200 iterations in 0:38:12 (1.91 s/it)
          best bbox/AP 20.78 after 1200 iterations: output/run/model_best.pth
          last bbox/AP 20.78 after 1200 iterations
          final checkpoint: output/run/model_final.pth
          metrics: output/run/metrics.json (tools/plot_metrics.py), log: output/run/log.txt

    A run stopped by a signal or an error says where it stopped and which checkpoint
    ``--resume`` continues from.

    Args:
        checkpointer: the run's AtomicCheckpointer (``save_dir``, ``last_checkpoint_path()``).
        best: the run's BestCheckpointer (best and last value of the metric), or None.
        started: ``time.perf_counter()`` when the run started (default: when training starts).
    """

    def __init__(self, checkpointer, best=None, started: Optional[float] = None):
        self.checkpointer = checkpointer
        self.best = best
        self.started = started

    def before_train(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def after_train(self) -> None:
        logger.info("\n".join(self.lines(sys.exc_info()[1])))

    def lines(self, error: Optional[BaseException] = None) -> List[str]:
        """The summary's lines; ``error``: what ended the training early, if anything."""
        trainer = self.trainer
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        finished = trainer.iter >= trainer.max_iter and error is None
        resumed = f"; resumed at iteration {trainer.start_iter}" if trainer.start_iter else ""
        if finished:
            try:  # the iterations' own time (IterationTimer), without start-up and evaluations
                speed = f" ({trainer.storage.history('time').global_avg():.3g} s/it{resumed})"
            except (KeyError, AttributeError):
                speed = f" ({resumed[2:]})" if resumed else ""
            lines = [f"Training done: {trainer.max_iter} iterations in {format_duration(elapsed)}{speed}"]
        elif isinstance(error, TrainingInterrupted):
            lines = [
                f"Training stopped by {error.signal_name} after iteration {error.iteration} of {trainer.max_iter} "
                f"({format_duration(elapsed)}{resumed}): continue with --resume"
            ]
        else:
            reason = f" ({type(error).__name__})" if error is not None else ""
            lines = [
                f"Training stopped at iteration {trainer.iter} of {trainer.max_iter}{reason} after "
                f"{format_duration(elapsed)}{resumed}"
            ]
        tracker = self.best
        if tracker is not None and tracker.best is not None:
            where = f": {tracker.path}" if tracker.save and os.path.isfile(tracker.path) else ""
            lines.append(f"  best {tracker.metric} {format_metric(tracker.best[0])} after {tracker.best[1]} iterations{where}")
        if tracker is not None and tracker.last is not None:
            lines.append(f"  last {tracker.metric} {format_metric(tracker.last[0])} after {tracker.last[1]} iterations")
        elif tracker is not None:
            lines.append(f"  no {tracker.metric} in this run (no evaluation, or it reports other metrics)")
        last = self.checkpointer.last_checkpoint_path()
        label = "final checkpoint" if finished else "last checkpoint (--resume starts there)"
        lines.append(f"  {label}: {last or 'none written'}")
        folder = self.checkpointer.save_dir
        lines.append(
            f"  metrics: {os.path.join(folder, 'metrics.json')} (tools/plot_metrics.py), log: {os.path.join(folder, 'log.txt')}"
        )
        return lines
