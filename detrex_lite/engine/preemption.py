"""Stopping a training run cleanly on a signal: finish the step, write a checkpoint, exit.

Cluster schedulers pre-empt jobs with SIGTERM (SLURM sends it at the time limit and on
pre-emption; `sbatch --signal=USR1@120` asks for SIGUSR1 two minutes earlier). On SIGTERM or
SIGUSR1 the run finishes the current iteration, writes `model_XXXXXXX.pth` atomically (and
`last_checkpoint`), logs where, and exits with REQUEUE_EXIT_CODE (75), which
tools/submit_slurm.sh turns into a requeue that `--resume`s. The first Ctrl-C (SIGINT) does the
same and exits with 130; a second Ctrl-C stops at once (KeyboardInterrupt; the atomic writes
leave every file whole).

With several processes every rank must stop after the same iteration (or the others would wait
for it in the next all-reduce): the ranks agree with one all-reduce of the request per iteration.
"""
import contextlib
import logging
import os
import signal
import threading
from typing import Dict, Optional

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

from .errors import INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE, TrainingInterrupted

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@contextlib.contextmanager
def _stop_signals_handled_by(handler):
    """Sets ``handler`` for every stop signal and restores the previous handlers on exit; off the
    main thread (where Python cannot set handlers) changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Dict[int, object] = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)


class GracefulStop:
    """Records the first stop signal; a second Ctrl-C raises KeyboardInterrupt at once.

    `installed()` sets the handlers for this process (main thread only) and restores the previous
    ones on exit. A process forked from this one (a DataLoader worker) inherits the handlers but
    ignores the signals: the training process decides when its workers stop.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._pid = os.getpid()

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return
        if self.signum:
            if signum == signal.SIGINT:
                os.write(2, b"\ntrain_net: second interrupt: stopping at once\n")
                raise KeyboardInterrupt
            return  # a repeated SIGTERM / SIGUSR1: already stopping
        self.signum = signum
        name = signal.Signals(signum).name
        os.write(
            2,
            f"\ntrain_net: {name} received: finishing the current iteration, then writing a checkpoint "
            "(Ctrl-C again stops at once)\n".encode(),
        )

    @contextlib.contextmanager
    def installed(self):
        self._pid = os.getpid()
        with _stop_signals_handled_by(self._handle):
            yield self

    def requested_on_any_rank(self) -> int:
        """The signal number if this or any other process got a stop signal, else 0."""
        if comm.get_world_size() == 1:
            return self.signum
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([self.signum], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class PreemptionCheckpointer(HookBase):
    """After each iteration: if a stop signal arrived (on any rank), write a checkpoint on the
    main process, wait for every rank, and raise TrainingInterrupted.

    Register it right after the PeriodicCheckpointer (it reuses a checkpoint that one just wrote)
    and before the EvalHook (a pre-empted job should not start a long evaluation).
    """

    def __init__(self, stop: GracefulStop, checkpointer, period: int, file_prefix: str = "model"):
        self.stop = stop
        self.checkpointer = checkpointer
        self.period = int(period)
        self.file_prefix = file_prefix

    def after_step(self) -> None:
        signum = self.stop.requested_on_any_rank()
        if not signum:
            return
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter - 1:
            return  # the final checkpoint has just been written; let the run end normally
        name = f"{self.file_prefix}_{iteration:07d}"
        path = ""
        if comm.is_main_process():
            path = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
            if (iteration + 1) % self.period != 0:  # else the PeriodicCheckpointer just wrote it
                self.checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        name_of = signal.Signals(signum).name
        exit_code = INTERRUPT_EXIT_CODE if signum == signal.SIGINT else REQUEUE_EXIT_CODE
        if comm.is_main_process():
            logger.warning(
                f"{name_of}: stopped after iteration {iteration}; checkpoint written to {path} "
                f"(continue with --resume; exit code {exit_code})"
            )
        raise TrainingInterrupted(name_of, iteration, path, exit_code)


@contextlib.contextmanager
def forward_stop_signals_to_children():
    """In a launcher process (`--num-gpus N`): pass SIGTERM / SIGUSR1 on to the worker processes
    (they checkpoint and stop) and keep running until they end. SIGINT from a terminal reaches
    the workers by itself (same process group), so the launcher only waits for them; it remembers
    the signal so that the job's exit code says the run was interrupted.
    """
    import multiprocessing

    received = {"signum": 0}

    def forward(signum, frame):
        received["signum"] = received["signum"] or signum
        if signum == signal.SIGINT:
            return
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    with _stop_signals_handled_by(forward):
        yield received


def exit_code_for(signum: Optional[int]) -> int:
    """The exit code of a run stopped by `signum` (0: not stopped)."""
    if not signum:
        return 0
    return INTERRUPT_EXIT_CODE if signum == signal.SIGINT else REQUEUE_EXIT_CODE
