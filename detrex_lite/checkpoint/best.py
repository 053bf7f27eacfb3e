"""Reading a run's ``model_best.pth`` (written by :mod:`detrex_lite.engine.best_checkpoint`):
its ``meta["best"]`` says which metric made it the best, its value and when."""
from typing import Any, Dict, Optional

from .io import peek_meta

__all__ = ["BEST_CHECKPOINT", "describe_best", "format_metric", "read_best"]

BEST_CHECKPOINT = "model_best.pth"


def read_best(path: str) -> Optional[Dict[str, Any]]:
    """``meta["best"]`` of a best checkpoint ({"metric": "bbox/AP", "value": 20.78, "iteration":
    1200}, iteration = iterations trained), or None when the file is missing, unreadable or has
    none. Memory-maps the file: the weights are not read."""
    best = peek_meta(path).get("best")  # {} for a missing, damaged or foreign file: no best known
    if not isinstance(best, dict) or not isinstance(best.get("value"), (int, float)):
        return None
    return dict(best)


def format_metric(value: float) -> str:
    """An evaluation metric for a log line: ``20.78``, ``0.00``, small values with 4 digits."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 1 or value != value else f"{value:.4g}"


def describe_best(best: Optional[Dict[str, Any]]) -> str:
    """``bbox/AP 20.78 after 1200 iterations`` ("" for None)."""
    if not best:
        return ""
    return f"{best.get('metric', '?')} {format_metric(float(best['value']))} after {best.get('iteration', '?')} iterations"
