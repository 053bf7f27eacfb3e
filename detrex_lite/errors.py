"""Every error detrex_lite raises on purpose, under one base class.

``str(err)`` of a :class:`DetrexError` is one line that names the file, key or shape at fault and
what to do; command-line tools print it as it is and exit 2 (no traceback). Each class also keeps
the builtin base it had before (``OSError``, ``ValueError``, ...), so ``except OSError`` in user
code still catches an unreadable image.

This module imports nothing but the standard library: any tool can catch these errors without
paying for torch.
"""

__all__ = [
    "REQUEUE_EXIT_CODE",
    "INTERRUPT_EXIT_CODE",
    "StoppedOutsideTraining",
    "DetrexError",
    "ConfigError",
    "DatasetError",
    "ImageReadError",
    "ImageNotFoundError",
    "CheckpointError",
    "CheckpointFileError",
    "CheckpointMismatchError",
    "NothingToResumeError",
    "ConversionError",
    "AnalysisError",
    "NonFiniteLossError",
    "OutputWriteError",
    "CheckpointWriteError",
    "OutputDirError",
    "OutputDirBusyError",
]


# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry later". A run that
# stopped on SIGTERM / SIGUSR1 exits with it; tools/submit_slurm.sh requeues the job on this code
# (and `RequeueExit=75` in slurm.conf does the same cluster-wide).
REQUEUE_EXIT_CODE = 75
# What a shell reports for a program stopped by Ctrl-C (128 + SIGINT): not requeued.
INTERRUPT_EXIT_CODE = 130


class StoppedOutsideTraining(BaseException):
    """SIGTERM / SIGUSR1 arrived while no training loop was running (start-up: imports, config,
    model, data; or after training): the run stops at once, with nothing new to save, and exits
    with REQUEUE_EXIT_CODE. A BaseException, so that no ``except Exception`` on the way swallows
    it (``finally`` blocks, e.g. the output folder's lock, still run)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class DetrexError(Exception):
    """Base of the errors detrex_lite raises deliberately; ``str(err)`` is the one-line message."""


class ConfigError(DetrexError):
    """A mistake in a config file, an override or a path given to a tool."""


class DatasetError(DetrexError, ValueError):
    """A dataset's annotation file is malformed; the message names the file and the record."""


class ImageReadError(DetrexError, OSError):
    """An image file is missing or cannot be decoded; the message names the file and image id."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An image file does not exist (an ImageReadError that ``except FileNotFoundError`` catches)."""


class CheckpointError(DetrexError, RuntimeError):
    """A checkpoint cannot be used (unreadable, or does not fit the model). ``str(err)`` is one
    line naming the file and what to do, for command-line tools to print as it is."""


class CheckpointFileError(CheckpointError):
    """The file is not a checkpoint this project can read (empty, text, damaged, not a dict)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the model (names, shapes or architecture). ``str(err)`` is
    one line; ``err.details`` lists every offending key."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class NothingToResumeError(CheckpointError):
    """``--resume`` found checkpoints in the output folder but none loads: training does not start
    over them (train_net exits 2 with the reason)."""


class ConversionError(DetrexError, KeyError):
    """A state dict cannot be converted: unknown keys, collisions, or missing pieces."""

    def __str__(self):  # KeyError would otherwise print the message with quotes
        return str(self.args[0]) if self.args else ""


class AnalysisError(DetrexError):
    """A missing file, an unknown dataset or predictions that do not fit the dataset."""


class NonFiniteLossError(DetrexError, FloatingPointError):
    """The loss, the matching cost or the weights became NaN or infinite; training stops before
    anything non-finite is stepped into the optimizer or written to a checkpoint."""


class OutputWriteError(DetrexError, OSError):
    """A file the run writes (a checkpoint, evaluation results) could not be written, e.g. the
    disk is full; the message names the file and the free space, and nothing was replaced."""


class CheckpointWriteError(OutputWriteError):
    """A checkpoint could not be written (e.g. the disk is full); nothing was replaced."""


class OutputDirError(DetrexError, OSError):
    """The output folder or its lock file cannot be used (not writable, disk full, the lock path
    is a directory); the message names the path and the cause."""


class OutputDirBusyError(OutputDirError, RuntimeError):
    """Another live run holds the output folder's lock."""
