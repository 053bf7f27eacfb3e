"""The model as *another* detrex_lite checkout builds it, timed in a subprocess
(``tools/time_checkout.py``, ``tools/benchmark.py --baseline-tree``).

Two checkouts cannot share a process (one ``detrex_lite`` package, one registration of the
compiled operator), so :func:`time_checkout` runs :mod:`.checkout_worker` by its file path with
the other checkout first on ``PYTHONPATH`` (and ``PYTHONSAFEPATH`` set, so that the worker's own
folder is not put on the path) and reads back the JSON line it prints.
"""
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

__all__ = ["git_revision", "time_checkout", "time_inputs_in_checkout", "time_checkout_main"]

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkout_worker.py")


def git_revision(tree: str) -> Optional[str]:
    """The short commit hash checked out in ``tree``; None outside git."""
    try:
        done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def time_checkout(
    tree: str,
    config_file: str,
    inputs_path: str,
    iters: int,
    warmup: int,
    opts: Sequence[str] = (),
    seed: int = 0,
    num_threads: Optional[int] = None,
    tune_allocator: bool = False,
) -> Dict:
    """Times ``iters`` no-grad eval forwards (after ``warmup``) of ``config_file`` (relative to
    ``tree``, overrides ``opts`` applied) as the checkout ``tree`` builds it, on the
    ``torch.save``'d input dicts at ``inputs_path``, in a subprocess (cwd ``tree``).

    Returns ms_per_iter, cpu_ms_per_iter, images_per_s, peak_mem_mb (the subprocess's peak RSS),
    imported_from and num_threads. Raises RuntimeError with the subprocess's last error line."""
    tree = os.path.abspath(tree)
    spec = {
        "tree": tree, "config_file": config_file, "inputs": os.path.abspath(inputs_path), "iters": iters,
        "warmup": warmup, "opts": list(opts), "seed": seed, "num_threads": num_threads,
        "tune_allocator": bool(tune_allocator),
    }
    env = {
        **os.environ, "PYTHONSAFEPATH": "1",
        "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, _WORKER, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(f"time_checkout.py on {tree} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_inputs_in_checkout(tree: str, config_file: str, inputs: List[Dict], **kwargs) -> Dict:
    """:func:`time_checkout` on ``inputs`` (a list of detectron2 input dicts, saved to a
    temporary file for the subprocess); ``kwargs`` as :func:`time_checkout`'s."""
    import torch

    with tempfile.TemporaryDirectory(prefix="detrex_lite_baseline_") as tmp:
        path = os.path.join(tmp, "inputs.pt")
        torch.save(inputs, path)
        return time_checkout(tree, config_file, path, **kwargs)


def time_checkout_main(args) -> Dict:
    """``tools/time_checkout.py``: :func:`time_checkout` with the parsed arguments
    (:func:`detrex_lite.benchmark.options.parse_time_checkout_args`); prints the result as one
    JSON line and returns it."""
    tree = os.path.abspath(args.tree)
    if not os.path.isdir(os.path.join(tree, "detrex_lite")):
        raise SystemExit(f"time_checkout: error: {tree} has no detrex_lite/ package")
    try:
        result = time_checkout(
            tree, args.config_file, args.inputs, args.iters, args.warmup, args.opts, args.seed, args.num_threads,
            args.tune_allocator,
        )
    except RuntimeError as err:
        raise SystemExit(f"time_checkout: error: {err}") from None
    print(json.dumps(result))
    return result
