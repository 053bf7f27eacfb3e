#!/usr/bin/env python
"""Train or evaluate a detrex_lite LazyConfig model (detectron2's trainer and COCO evaluation).

Flags come first, then config overrides (key=value, as many as needed). Every override must
name an existing key (`+key=value` adds a new one); config mistakes are reported in one line
(exit code 2) before any model is built. See docs/training.md.

Exit codes: 0 done; 1 a training error reported in one line (non-finite loss, unreadable data,
a checkpoint that cannot be written); 2 a config or command-line mistake, or the output folder is
in use by another run; 75 stopped by SIGTERM / SIGUSR1 after writing a checkpoint (requeue and
--resume); 130 stopped by Ctrl-C. See docs/reliability.md.
"""
import argparse
import logging
import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `projects` imports

import detrex_lite.data  # noqa: E402,F401  (first: registers the demo datasets, imports detectron2 quietly)
from detectron2.utils import comm  # noqa: E402

from detrex_lite.checkpoint import CheckpointError  # noqa: E402
from detrex_lite.checkpoint.run import find_run_checkpoint, resolve_num_classes, run_config_path  # noqa: E402
from detrex_lite.solver import schedule_periods  # noqa: E402
from detrex_lite.utils import json_io  # noqa: E402
from detrex_lite.config import (  # noqa: E402
    ConfigError,
    apply_overrides_checked,
    check_init_checkpoint,
    check_num_classes,
    check_structure,
    load_config_file,
)
from detrex_lite.data import DatasetError, ImageReadError  # noqa: E402
from detrex_lite.engine import (  # noqa: E402
    INTERRUPT_EXIT_CODE,
    REQUEUE_EXIT_CODE,
    CheckpointWriteError,
    NonFiniteLossError,
    OutputDirBusyError,
    OutputDirLock,
    TrainingInterrupted,
    atomic_write,
    build_model,
    default_setup,
    do_test,
    do_train,
    launch,
    launch_slurm,
    load_for_eval,
)
from detrex_lite.engine.preemption import forward_stop_signals_to_children  # noqa: E402

logger = logging.getLogger("detrex_lite.train_net")


def _run_folder_arguments(args):
    """(config file, overrides) with --run DIR: DIR/config.yaml, its newest complete checkpoint
    and DIR as the output folder, unless the command line names them."""
    overrides = list(args.opts or [])
    if overrides and overrides[0] == "--":
        overrides = overrides[1:]
    if not getattr(args, "run", None):
        return args.config_file, overrides
    if not args.eval_only:
        raise ConfigError("--run is for --eval-only (to continue a training use --resume train.output_dir=DIR)")
    try:
        config_file = args.config_file or run_config_path(args.run)
        extra = []
        if not any(o.startswith("train.init_checkpoint=") for o in overrides):
            extra.append(f"train.init_checkpoint={find_run_checkpoint(args.run)}")
        if not any(o.startswith("train.output_dir=") for o in overrides):
            extra.append(f"train.output_dir={args.run}")
    except (OSError, CheckpointError) as e:
        raise ConfigError(str(e)) from None
    return config_file, extra + overrides


def setup_config(args):
    """Load the config, apply the overrides and run every check; raises ConfigError."""
    config_file, overrides = _run_folder_arguments(args)
    cfg = load_config_file(config_file)
    apply_overrides_checked(cfg, overrides)
    check_structure(cfg)
    check_num_classes(cfg, eval_only=args.eval_only)
    try:  # the saved config.yaml states the class count, loadable without the dataset
        resolve_num_classes(cfg)
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
    resuming = args.resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint"))
    if args.eval_only and not cfg.train.init_checkpoint:
        raise ConfigError("--eval-only needs weights: add train.init_checkpoint=path/to/model.pth (or --run DIR)")
    if not resuming:
        check_init_checkpoint(cfg.train.init_checkpoint)
    try:
        schedule_periods(cfg.train)  # fractions of train.max_iter; resolved again at start-up
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def main(args, cfg=None):
    """Runs in every process. `cfg`: the config cli() loaded, when this is its process (a config
    file runs once per process: registering a dataset in it works)."""
    if cfg is None:
        cfg = setup_config(args)
    default_setup(cfg, args)  # detrex_lite's: plain-text log.txt, no CUDA_HOME warning on CPU
    if args.eval_only:
        model = build_model(cfg)
        load_for_eval(cfg, model)
        model.eval()  # no DDP wrapper: each process evaluates its share of the test set
        if args.precision:  # the CPU inference mode (docs/inference.md)
            from detrex_lite.inference import optimize_for_inference

            model = optimize_for_inference(model, args.precision, force_bf16=args.force_bf16)
        results = do_test(cfg, model)
        if comm.is_main_process():
            path = os.path.join(cfg.train.output_dir, "eval_results.json")
            atomic_write(path, lambda f: f.write(json_io.dumps(results, indent=2).encode()))
            logger.info(f"Evaluation results written to {path}")
        return results
    do_train(cfg, resume=args.resume)
    return None


def _spawned_main(args):
    """main() in a process started by launch(): a run stopped by a signal exits with its code."""
    try:
        return main(args)
    except TrainingInterrupted as e:
        # Every rank has run its after_train hooks (rank 0: its last writes) before any leaves;
        # launch's _run_rank then shuts the process group down.
        comm.synchronize()
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # a second Ctrl-C: each worker has said so; no traceback per rank
        raise SystemExit(INTERRUPT_EXIT_CODE) from None


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
  # evaluate a training run's newest complete checkpoint (its config.yaml, no dataset registration)
  python tools/train_net.py --eval-only --run output/ddetr
  # continue an interrupted run from its last complete checkpoint
  python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \\
      --resume train.output_dir=output/ddetr
  # two machines: run on each, with its own --machine-rank
  python tools/train_net.py --config-file CONFIG --num-gpus 8 --num-machines 2 --machine-rank 0 \\
      --dist-url tcp://MACHINE0_ADDRESS:29500
"""


def get_parser() -> argparse.ArgumentParser:
    """train_net's command line: detectron2's training flags, then LazyConfig overrides."""
    parser = argparse.ArgumentParser(
        prog="train_net.py",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="LazyConfig .py (or a saved config.yaml)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in train.output_dir (start from train.init_checkpoint when there "
        "is none)",
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
        help="with --eval-only: a training output folder; its config.yaml, its newest complete "
        "checkpoint and DIR as train.output_dir (each unless given); no dataset registration needed "
        "beyond the test set's",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=None,
        metavar="key=value",
        help="config overrides after the flags, e.g. train.max_iter=1000 train.output_dir=output/run "
        "(+key=value adds a key)",
    )
    return parser


def _check_launch_args(args) -> None:
    if args.num_gpus < 1:
        raise ConfigError(f"--num-gpus {args.num_gpus}: expected at least 1 (processes per machine; on a CPU-only machine 1 or more CPU processes)")
    if args.num_machines < 1:
        raise ConfigError(f"--num-machines {args.num_machines}: expected at least 1")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigError(f"--machine-rank {args.machine_rank}: expected 0..{args.num_machines - 1} (--num-machines {args.num_machines})")
    if args.num_machines > 1 and args.dist_url == "auto" and not args.slurm:
        raise ConfigError("--num-machines > 1 needs --dist-url tcp://<machine 0 address>:<port>")


def _error(message, code: int) -> int:
    print(f"train_net: error: {message}", file=sys.stderr)
    return code


def check_flags_before_overrides(parser: argparse.ArgumentParser, opts) -> None:
    """A flag written after the first override is swallowed by the overrides: say so (ConfigError)."""
    flags = {s for action in parser._actions for s in action.option_strings}
    for item in opts or []:
        name = item.split("=", 1)[0]
        if name in flags:
            first = next(o for o in opts if o != "--")
            raise ConfigError(
                f"flag {name} comes after the config override '{first}': flags go before the overrides, "
                f"e.g. train_net.py --config-file FILE {name} ... {first}"
            )


def cli(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        check_flags_before_overrides(parser, args.opts)
        # Checked once here, before any process is spawned or model built.
        if not args.slurm:
            _check_launch_args(args)
        cfg = setup_config(args)
    except ConfigError as e:
        return _error(e, 2)
    except (DatasetError, ImageReadError) as e:
        return _error(e, 1)
    # The process that launches the run's main process holds the output folder's lock.
    holds_lock = os.environ.get("SLURM_PROCID", "0") == "0" if args.slurm else args.machine_rank == 0
    lock = OutputDirLock(cfg.train.output_dir)
    if holds_lock:
        try:
            lock.acquire()
        except OutputDirBusyError as e:
            return _error(e, 2)
        if lock.taken_over:
            print(f"train_net: warning: {lock.taken_over}", file=sys.stderr)
    try:
        return _run(args, cfg)
    finally:
        if holds_lock:
            lock.release()


def _run(args, cfg) -> int:
    timeout = timedelta(seconds=float(cfg.train.get("dist_timeout", 1800)))
    device = cfg.train.get("device", "auto")
    use_cuda = None if device == "auto" else device.startswith("cuda")
    spawns = not args.slurm and args.num_gpus * args.num_machines > 1
    try:
        if args.slurm:
            launch_slurm(main, args=(args, cfg), timeout=timeout, use_cuda=use_cuda)
        elif not spawns:
            launch(main, 1, args=(args, cfg), timeout=timeout, use_cuda=use_cuda)
        else:
            import torch.multiprocessing as mp

            with forward_stop_signals_to_children() as received:
                try:
                    launch(
                        _spawned_main,
                        args.num_gpus,
                        num_machines=args.num_machines,
                        machine_rank=args.machine_rank,
                        dist_url=args.dist_url,
                        args=(args,),
                        timeout=timeout,
                        use_cuda=use_cuda,
                    )
                except mp.ProcessExitedException as e:
                    if e.exit_code in (REQUEUE_EXIT_CODE, INTERRUPT_EXIT_CODE):
                        return e.exit_code
                    raise
            if received["signum"]:  # the workers were stopped at once by a second Ctrl-C
                return INTERRUPT_EXIT_CODE
    except TrainingInterrupted as e:  # logged with the checkpoint's path where it happened
        return e.exit_code
    except KeyboardInterrupt:
        return _error("interrupted twice: stopped at once; files written so far are complete (atomic writes)", INTERRUPT_EXIT_CODE)
    except (NonFiniteLossError, CheckpointError, CheckpointWriteError, DatasetError, ImageReadError) as e:
        # single process; with several, the launcher reports the worker's traceback
        return _error(e, 1)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
