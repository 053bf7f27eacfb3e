"""What the subprocess of :func:`detrex_lite.benchmark.checkout.time_checkout` runs: it builds a
config's model with the code of *another* detrex_lite checkout and times eval forwards.

Run as a script (``python checkout_worker.py SPEC_JSON``) with the other checkout first on
``PYTHONPATH``, so that ``import detrex_lite`` (and the config's own imports) find that
checkout's code: this file therefore imports nothing of this checkout by name, and uses only
what every detrex_lite version has (``LazyConfig.load``, ``instantiate(cfg.model)``,
``model.eval()``, ``model(list[dict])``). Prints one JSON object as its last line.
"""
import importlib.util
import json
import os
import resource
import sys
import time
from typing import Dict, List, Sequence


def _tune_allocator() -> bool:
    """This checkout's :func:`detrex_lite.inference.tune_cpu_allocator` (the timed checkout may
    not have it), loaded from its file: ``import detrex_lite`` here must find the timed checkout's."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "inference.py")
    spec = importlib.util.spec_from_file_location("_checkout_worker_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tune_cpu_allocator()


def time_model(
    tree: str, config_file: str, inputs: List[Dict], iters: int, warmup: int, opts: Sequence[str] = (), seed: int = 0
) -> Dict:
    """Builds ``config_file`` (relative to ``tree``) with the code that ``import detrex_lite``
    finds and times ``iters`` no-grad eval forwards on ``inputs`` after ``warmup`` ones.
    Returns ms_per_iter, cpu_ms_per_iter (process CPU time), images_per_s, peak_mem_mb (peak
    RSS) and imported_from (the ``detrex_lite`` directory that built the model)."""
    import torch
    from detectron2.config import LazyConfig, instantiate

    import detrex_lite

    cfg = LazyConfig.load(os.path.join(tree, config_file))
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    torch.manual_seed(seed)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        for _ in range(warmup):
            model(inputs)
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(iters):
            model(inputs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "ms_per_iter": 1000 * seconds / iters,
        "cpu_ms_per_iter": 1000 * cpu_seconds / iters,
        "images_per_s": len(inputs) * iters / seconds,
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "imported_from": os.path.dirname(os.path.abspath(detrex_lite.__file__)),
    }


def main(spec: Dict) -> Dict:
    """``spec``: tree, config_file, inputs (a ``torch.save``'d list of input dicts), iters,
    warmup, opts, seed, num_threads (None: torch's) and tune_allocator, as
    :func:`detrex_lite.benchmark.checkout.time_checkout` writes it."""
    import torch

    if spec["num_threads"]:
        torch.set_num_threads(spec["num_threads"])
    if spec["tune_allocator"]:
        _tune_allocator()
    inputs = torch.load(spec["inputs"], weights_only=False)
    result = time_model(spec["tree"], spec["config_file"], inputs, spec["iters"], spec["warmup"], spec["opts"], spec["seed"])
    result["num_threads"] = torch.get_num_threads()
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
