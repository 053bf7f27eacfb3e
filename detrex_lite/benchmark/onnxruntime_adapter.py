"""onnxruntime on our exported model, behind our model's call (``tools/benchmark.py --onnx``).
onnxruntime is imported on use."""
from typing import Dict, Sequence

__all__ = ["OnnxRuntimeDetector"]


class OnnxRuntimeDetector:
    """onnxruntime (CPU execution provider) on ``model`` exported with
    :func:`detrex_lite.export.onnx_export.export_onnx` (fixed canvas = the benchmark's image size,
    dynamic batch), behind the same call as our model. The timed call runs the session on inputs
    normalised and padded beforehand (the graph takes normalised images)."""

    def __init__(self, model, image_size: Sequence[int], path: str, threads: int):
        import onnxruntime as ort

        from detrex_lite.export.onnx_export import export_onnx, prepare_export_inputs

        export_onnx(model, path, tuple(image_size), dynamic_size=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self._prepare = lambda inputs: prepare_export_inputs(model, [x["image"] for x in inputs], tuple(image_size))
        self._cache: Dict[int, Dict] = {}

    def __call__(self, batched_inputs):
        key = id(batched_inputs)
        if key not in self._cache:
            images, sizes = self._prepare(batched_inputs)
            self._cache = {key: {"images": images.numpy(), "image_sizes": sizes.numpy()}}
        return self.session.run(None, self._cache[key])

    def eval(self):
        return self
