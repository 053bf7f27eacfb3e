"""Training: the trainer (AMP, gradient clipping, EMA, non-finite guard), atomic checkpoints
that never hold a NaN, stopping on SIGTERM / SIGUSR1 / Ctrl-C with a checkpoint (preemption.py),
one run per output folder (output_lock.py), process launch (multi-process, multi-machine, SLURM)
the train/test entry points, the progress line (writers.py), model_best.pth (best_checkpoint.py)
and the closing summary (summary.py). The errors train_net reports in one line are in errors.py.

Names are imported on first use, so that a spawned worker that only needs `launch` does not pay
for importing detectron2's engine and evaluation packages.
"""
import importlib

# Eager: light (torch.distributed only), and the function `launch` must shadow the submodule of
# the same name as a package attribute.
from .launch import expand_hostlist, launch, launch_slurm, resolve_device, slurm_dist_from_env

_EXPORTS = {
    "AtomicCheckpointer": "checkpoint",
    "BestCheckpointer": "best_checkpoint",
    "atomic_write": "checkpoint",
    "CheckpointWriteError": "errors",
    "GracefulStop": "preemption",
    "INTERRUPT_EXIT_CODE": "errors",
    "OutputDirBusyError": "errors",
    "OutputDirError": "errors",
    "OutputDirLock": "output_lock",
    "PeriodicCheckpointer": "checkpoint",
    "PreemptionCheckpointer": "preemption",
    "REQUEUE_EXIT_CODE": "errors",
    "TrainingInterrupted": "errors",
    "TrainingSummary": "summary",
    "build_model": "defaults",
    "create_ddp_model": "defaults",
    "default_setup": "run_setup",
    "default_writers": "writers",
    "ProgressPrinter": "writers",
    "do_test": "defaults",
    "do_train": "defaults",
    "load_for_eval": "defaults",
    "ModelEMA": "ema",
    "DetrTrainer": "trainer",
    "NonFiniteLossError": "errors",
}

__all__ = sorted(_EXPORTS) + ["expand_hostlist", "launch", "launch_slurm", "resolve_device", "slurm_dist_from_env"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
