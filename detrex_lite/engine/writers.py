"""Event writers for training: detectron2's, with a metrics.json that is always valid JSON."""
import os
from typing import List, Optional

from detectron2.utils.events import CommonMetricPrinter, EventWriter, JSONWriter, TensorboardXWriter
from detectron2.utils.events import get_event_storage

from detrex_lite.utils.json_io import dumps


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


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[EventWriter]:
    """The console printer, metrics.json (strict JSON) and TensorBoard, as detectron2's."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        StrictJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]
