"""Strict JSON out: NaN and infinities become null, so every file the project writes parses.

Python's ``json`` writes ``NaN`` / ``Infinity`` by default, which is not JSON (``jq``,
JavaScript and many readers refuse it). COCO evaluation returns NaN for an undefined metric
(e.g. APl when no object is large), so metrics and reports meet them in normal runs.
"""
import json
import math
import os
from typing import Any

import numpy as np


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN/inf float (Python or numpy) replaced by None, numpy scalars and
    arrays made Python numbers and lists, tuples made lists; everything else unchanged."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_or_none(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` of ``finite_or_none(obj)``; refuses anything still not strict JSON."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def dump(obj: Any, path: str, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON to ``path`` (its folder is created), whole: through a
    temporary file renamed over ``path`` when complete (a process killed meanwhile, or an object
    that is not JSON, leaves the previous file as it was)."""
    from detrex_lite.utils.files import replaced_when_done

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    text = dumps(obj, indent=indent) + "\n"
    with replaced_when_done(path) as tmp, open(tmp, "w") as f:
        f.write(text)
