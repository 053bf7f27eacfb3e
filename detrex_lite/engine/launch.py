"""Starting one process per device, on one machine or many (torch.distributed or SLURM).

:func:`launch` does what detectron2's ``launch`` (``detectron2.engine.launch``) does (one spawned
process per device, gloo on a machine without GPUs and NCCL with them, ``timeout`` given to the
process group so that a dead or stuck worker fails the job instead of hanging it), plus what it
lacks: each rank's own traceback when it fails, a clean process-group shutdown, and a spawned
worker that imports detectron2 without its ``torch.jit.script`` deprecation warning (the
function to run travels pickled and is loaded only after that import). :func:`launch_slurm`
covers what detectron2 has no launcher for: SLURM jobs, where ``srun`` starts one task per device
and the ranks come from SLURM's variables.

This module imports torch and ``detectron2.utils.comm`` only (not ``detectron2.engine``), so
that a spawned worker loads it before anything that triggers the warning.
"""
import logging
import os
import pickle
import re
import socket
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.reduction import ForkingPickler  # torch.multiprocessing adds its tensor reductions
from typing import Callable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from detrex_lite.cli.quiet_imports import import_detectron2_quietly

logger = logging.getLogger(__name__)

# How long a collective (and the start-up barrier) waits for the other processes, as in detectron2.
DEFAULT_TIMEOUT = timedelta(minutes=30)

__all__ = ["DEFAULT_TIMEOUT", "expand_hostlist", "launch", "launch_slurm", "resolve_device", "slurm_dist_from_env"]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={device!r} but no CUDA GPU is visible")
    return device


def _run_rank(main_func: Callable, args: Sequence) -> None:
    """main_func(*args) in a worker whose process group is up."""
    try:
        main_func(*args)
    except SystemExit:
        raise  # a deliberate exit code (e.g. a run that stopped on SIGTERM after its checkpoint)
    except BaseException:
        # torch.multiprocessing reports only the first failed process it notices, which may be a
        # rank whose collective broke because another one died: print every rank's own error.
        sys.stderr.write(f"[rank {comm.get_rank()}] " + traceback.format_exc())
        sys.stderr.flush()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    main_func: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    use_cuda: Optional[bool] = None,
) -> None:
    """Run `main_func(*args)` in num_processes_per_machine processes on each of num_machines.

    Args:
        dist_url: "tcp://host:port" of machine 0 ("auto" or None: a free local port, one machine).
        timeout: how long a collective (and the start-up barrier) waits for the other processes.
        use_cuda: whether the processes use GPUs (NCCL, one GPU each); default: whether a GPU is
            visible. As with detectron2's launcher, several processes use NCCL exactly when a GPU
            is visible, so False on a machine with visible GPUs is refused (hide them with
            CUDA_VISIBLE_DEVICES= instead).

    A single process runs main_func in this process. With several, if one raises or dies, the
    others are terminated and this call raises (torch.multiprocessing's ProcessRaisedException
    or ProcessExitedException), so the job exits non-zero.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if use_cuda is not None and use_cuda != torch.cuda.is_available():
        raise RuntimeError(
            f"launch: use_cuda={use_cuda} with {'visible' if torch.cuda.is_available() else 'no'} GPUs: "
            "several processes use NCCL exactly when a GPU is visible (CUDA_VISIBLE_DEVICES= trains on CPU)"
        )
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; give tcp://<machine 0>:<port>")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    payload = bytes(ForkingPickler.dumps((main_func, tuple(args))))
    mp.start_processes(
        _spawned_worker,
        nprocs=num_processes_per_machine,
        args=(payload, world_size, num_processes_per_machine, machine_rank, dist_url, use_cuda, timeout),
        daemon=False,
    )


def _free_port() -> int:
    """A TCP port that is free on this machine now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _spawned_worker(
    local_rank: int, payload: bytes, world_size: int, local_size: int, machine_rank: int, dist_url: str,
    use_cuda: bool, timeout: timedelta,
) -> None:
    """One process started by launch(): joins the process group, then runs main_func(*args).

    ``payload`` is ``(main_func, args)`` pickled: unpickling it imports main_func's modules,
    which is done only after detectron2 has been imported without its jit warning.
    """
    import_detectron2_quietly()
    main_func, args = pickle.loads(payload)
    global_rank = machine_rank * local_size + local_rank
    try:
        _init_process_group(global_rank, world_size, local_rank, local_size, dist_url, use_cuda, timeout)
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _run_rank(main_func, args)


# ----------------------------------------------------------------------------- SLURM
@dataclass(frozen=True)
class SlurmDist:
    """Where this SLURM task sits in the job (one task per device)."""

    global_rank: int
    world_size: int
    local_rank: int
    local_size: int
    machine_rank: int
    num_machines: int
    dist_url: str


def expand_hostlist(hostlist: str) -> List[str]:
    """SLURM's compressed host list -> host names: "gpu[01-03,07],cpu5" ->
    ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"] (zero padding kept)."""
    hosts = []
    for match in re.finditer(r"([^,\[]+)(\[([^\]]*)\])?([^,]*)", hostlist):
        prefix, ranges, suffix = match.group(1), match.group(3), match.group(4)
        if not prefix.strip(","):
            continue
        if ranges is None:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{part}{suffix}")
    return hosts


def _tasks_per_node(env: Mapping[str, str], world_size: int, num_machines: int) -> int:
    # SLURM_NTASKS_PER_NODE is set with --ntasks-per-node; SLURM_TASKS_PER_NODE ("4(x2)") always.
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    tasks = env.get("SLURM_TASKS_PER_NODE", "")
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(\(x\d+\))?", tasks)}
    if len(counts) == 1:
        return counts.pop()
    if world_size % num_machines:
        raise RuntimeError(f"SLURM job with {world_size} tasks on {num_machines} nodes: use the same number per node")
    return world_size // num_machines


def slurm_dist_from_env(env: Optional[Mapping[str, str]] = None, default_port: int = 29500) -> SlurmDist:
    """Read this task's rank, world size and the master address from SLURM's variables.

    Uses SLURM_PROCID (global rank), SLURM_NTASKS (world size), SLURM_LOCALID (local rank),
    SLURM_NNODES / SLURM_NODEID, SLURM_(N)TASKS_PER_NODE and SLURM_NODELIST / SLURM_JOB_NODELIST
    (the first node is the master). MASTER_ADDR / MASTER_PORT override the address; the default
    port is derived from SLURM_JOB_ID so that two jobs sharing a node do not collide.
    """
    env = os.environ if env is None else env
    required = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    missing = [k for k in required if k not in env]
    if missing:
        raise RuntimeError(f"--slurm: {', '.join(missing)} not set (run the script with srun inside a SLURM job)")
    global_rank = int(env["SLURM_PROCID"])
    world_size = int(env["SLURM_NTASKS"])
    local_rank = int(env["SLURM_LOCALID"])
    num_machines = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))
    local_size = _tasks_per_node(env, world_size, num_machines)
    machine_rank = int(env["SLURM_NODEID"]) if "SLURM_NODEID" in env else global_rank // local_size
    if "MASTER_ADDR" in env:
        master = env["MASTER_ADDR"]
    else:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise RuntimeError("--slurm: SLURM_JOB_NODELIST / SLURM_NODELIST not set and no MASTER_ADDR")
        master = expand_hostlist(nodelist)[0]
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    else:
        port = default_port + int(env.get("SLURM_JOB_ID", "0")) % 10000
    return SlurmDist(
        global_rank=global_rank,
        world_size=world_size,
        local_rank=local_rank,
        local_size=local_size,
        machine_rank=machine_rank,
        num_machines=num_machines,
        dist_url=f"tcp://{master}:{port}",
    )


def _init_process_group(
    global_rank: int, world_size: int, local_rank: int, local_size: int, dist_url: str, use_cuda: bool, timeout
) -> None:
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_size > torch.cuda.device_count():
            raise RuntimeError(f"{local_size} processes per machine but only {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
    )
    comm.create_local_process_group(local_size)
    # A barrier right away, so that a machine that never joins fails here within the timeout.
    comm.synchronize()


def launch_slurm(
    main_func: Callable,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    use_cuda: Optional[bool] = None,
    env: Optional[Mapping[str, str]] = None,
) -> None:
    """Run main_func in this SLURM task (srun starts one task per device; nothing is spawned)."""
    info = slurm_dist_from_env(env)
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    logger.info(f"SLURM task: {info}")
    if info.world_size == 1:
        main_func(*args)
        return
    _init_process_group(
        info.global_rank, info.world_size, info.local_rank, info.local_size, info.dist_url, use_cuda, timeout
    )
    _run_rank(main_func, args)
