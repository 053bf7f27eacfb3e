"""The training errors that tools/train_net.py reports in one line (no traceback).

Each message names what went wrong, where (iteration, file) and what to do about it.
"""
from detrex_lite.errors import (  # noqa: F401  (re-exported)
    INTERRUPT_EXIT_CODE,
    REQUEUE_EXIT_CODE,
    CheckpointWriteError,
    NonFiniteLossError,
    OutputDirBusyError,
    OutputDirError,
    OutputWriteError,
)


class TrainingInterrupted(BaseException):
    """Training stopped on a signal after writing a checkpoint.

    A BaseException (like KeyboardInterrupt), so that detectron2's training loop does not log it
    as a crash; its hooks' after_train still run.

    Attributes:
        signal_name: "SIGTERM", "SIGUSR1" or "SIGINT".
        iteration: the last finished iteration (the checkpoint's "iteration").
        checkpoint: path of the checkpoint written (on the main process; "" elsewhere).
        exit_code: REQUEUE_EXIT_CODE for SIGTERM / SIGUSR1, INTERRUPT_EXIT_CODE for SIGINT.
    """

    def __init__(self, signal_name: str, iteration: int, checkpoint: str, exit_code: int):
        super().__init__(f"{signal_name}: stopped after iteration {iteration}, checkpoint {checkpoint or '(main process)'}")
        self.signal_name = signal_name
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.exit_code = exit_code


def non_finite_message(what: str, iteration: int, details: str, last_checkpoint: str) -> str:
    """The one line of every non-finite stop: iteration, the terms at fault, the last good
    checkpoint and what works from there (--resume honours optimizer.lr overrides)."""
    if last_checkpoint:
        advice = (
            f"last good checkpoint: {last_checkpoint} (resume from it with --resume and a lower "
            "optimizer.lr, or with train.amp.enabled=False)"
        )
    else:
        advice = "last good checkpoint: none saved yet (start again with a lower optimizer.lr, or with train.amp.enabled=False)"
    return f"non-finite {what} at iteration {iteration}: {details}; {advice}"
