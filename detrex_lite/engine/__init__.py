"""Training: the trainer (AMP, gradient clipping, EMA, non-finite guard), atomic checkpoints,
process launch (multi-process, multi-machine, SLURM) and the train/test entry points."""
from .checkpoint import AtomicCheckpointer, atomic_write
from .defaults import build_model, create_ddp_model, do_test, do_train, load_for_eval
from .ema import ModelEMA
from .launch import expand_hostlist, launch, launch_slurm, resolve_device, slurm_dist_from_env
from .trainer import DetrTrainer, NonFiniteLossError

__all__ = [
    "AtomicCheckpointer",
    "DetrTrainer",
    "ModelEMA",
    "NonFiniteLossError",
    "atomic_write",
    "build_model",
    "create_ddp_model",
    "do_test",
    "do_train",
    "expand_hostlist",
    "launch",
    "launch_slurm",
    "load_for_eval",
    "resolve_device",
    "slurm_dist_from_env",
]
