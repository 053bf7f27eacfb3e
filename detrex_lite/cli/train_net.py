"""``tools/train_net.py``'s command line (stdlib only: ``--help`` answers before torch loads).

:func:`cli` parses the arguments, then imports :mod:`detrex_lite.engine.train_net`, which does
the work and gives the exit code.
"""
import argparse
import contextlib
import signal
import sys
import threading
from typing import Optional, Sequence

from detrex_lite.errors import REQUEUE_EXIT_CODE, ConfigError, StoppedOutsideTraining

from .entry import tool_parser
from .overrides import add_override_arguments, add_trust_config_argument, collect_overrides
from .quiet_imports import import_detectron2_quietly

__all__ = ["cli", "get_parser", "parse_args"]

DESCRIPTION = """\
Train or evaluate a detrex_lite LazyConfig model (detectron2's trainer and COCO evaluation).

Flags come first, then config overrides (key=value, as many as needed). Every override must
name an existing key (`+key=value` adds a new one); config mistakes are reported in one line
(exit code 2) before any model is built. See docs/training.md.

Exit codes: 0 done; 1 a training error reported in one line (non-finite loss, unreadable data,
a checkpoint that cannot be written); 2 a config or command-line mistake, or the output folder is
in use by another run; 75 stopped by SIGTERM / SIGUSR1 after writing a checkpoint (requeue and
--resume); 130 stopped by Ctrl-C. See docs/reliability.md.
"""

EPILOG = """\
examples:
  # the demo (synthetic data, CPU, ~10 min)
  python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo.py
  # 8 GPUs, the paper's recipe; overrides (key=value) come after the flags
  python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \\
      --num-gpus 8 train.output_dir=output/ddetr dataloader.train.total_batch_size=32
  # evaluate a checkpoint
  python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \\
      --eval-only train.init_checkpoint=output/ddetr/model_final.pth
  # evaluate a training run's model_best.pth (else its newest checkpoint; its config.yaml, no dataset registration)
  python tools/train_net.py --eval-only --run output/ddetr
  # continue an interrupted run from its last complete checkpoint (its config.yaml)
  python tools/train_net.py --resume --run output/ddetr
  # the same with a lower lr (keys set here are intended changes; other differences from the
  # run's config.yaml stop the run unless --resume-changed is given)
  python tools/train_net.py --resume --run output/ddetr optimizer.lr=1e-5
  # two machines: run on each, with its own --machine-rank
  python tools/train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \\
      --dist-url tcp://MACHINE0_ADDRESS:29500
"""


def get_parser() -> argparse.ArgumentParser:
    """train_net's command line: detectron2's training flags, then LazyConfig overrides."""
    parser = tool_parser("train_net.py", DESCRIPTION, EPILOG)
    parser.add_argument("--config-file", default="", metavar="FILE", help="LazyConfig .py (or a saved config.yaml)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in train.output_dir (start from train.init_checkpoint when there "
        "is none); the config must be the run's config.yaml except for the keys set on this command line",
    )
    parser.add_argument(
        "--resume-changed",
        action="store_true",
        help="with --resume: accept differences from the run's config.yaml in keys this command line does not set "
        "(they are logged)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate train.init_checkpoint, no training")
    parser.add_argument(
        "--precision", default=None, choices=["fp32", "bf16"],
        help="with --eval-only on CPU: evaluate through the CPU inference mode (detrex_lite.inference; bf16 "
        "only where the CPU has native bf16, else fp32 with a warning)",
    )
    parser.add_argument("--force-bf16", action="store_true", help="with --precision bf16: run bf16 even without native support")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine, one per GPU (default: 1)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines (default: 1)")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="rank of this machine, 0 .. num-machines - 1 (default: 0)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="torch.distributed init URL; 'auto' (default) picks a free local port, several machines need "
        "tcp://<machine 0 address>:<port>",
    )
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="run as one task of an srun job: rank, world size and master address come from "
        "SLURM's variables (--num-gpus/--num-machines/--machine-rank/--dist-url are ignored)",
    )
    parser.add_argument(
        "--run",
        default=None,
        metavar="DIR",
        help="with --eval-only: a training output folder; its config.yaml, its model_best.pth (else its "
        "newest complete checkpoint) and DIR as train.output_dir (each unless given); with --resume: its "
        "config.yaml and DIR as train.output_dir. Datasets the run registered in its config file are "
        "registered again from DIR/datasets.json",
    )
    add_trust_config_argument(parser)
    add_override_arguments(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """train_net's arguments; ``opts`` holds every override (the bare ``key=value`` words, then
    those of the deprecated ``--opts``). Raises ConfigError for a flag written after the first
    override (and SystemExit, as argparse does, for an unknown flag or ``--help``)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    args.opts = collect_overrides(parser, args)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the commands error messages print
    if args.resume_changed and not args.resume:
        raise ConfigError("--resume-changed goes with --resume")
    return args


def _stop_outside_training(signum, frame) -> None:
    raise StoppedOutsideTraining(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals_from_the_start():
    """SIGTERM / SIGUSR1 handled from the first moment of the process (main thread only): before
    the training loop installs its own handler (imports, config, model and data take seconds) and
    after it, the run stops at once with REQUEUE_EXIT_CODE instead of being killed (exit 143,
    which SLURM does not requeue). The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _stop_outside_training) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Run train_net with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    with _stop_signals_from_the_start():
        try:
            args = parse_args(argv)
            import_detectron2_quietly()
            from detrex_lite.engine.train_net import run

            return run(args)
        except ConfigError as e:  # a flag written after the first override
            print(f"train_net: error: {e}", file=sys.stderr)
            return 2
        except StoppedOutsideTraining as e:
            print(
                f"train_net: {e.signal_name} received outside the training loop (start-up or final "
                f"evaluation): stopped without writing a checkpoint; exit {REQUEUE_EXIT_CODE} "
                "(a requeued --resume continues from the last checkpoint)",
                file=sys.stderr,
            )
            return REQUEUE_EXIT_CODE
