"""What ``tools/train_net.py`` does once its arguments are parsed: load and check the config,
hold the output folder, launch one process per device (or join a SLURM job), train or
evaluate, and map each way a run can end to the tool's exit code.

Exit codes: 0 done; 1 a training error reported in one line (non-finite loss, unreadable data,
a checkpoint that cannot be written); 2 a config or command-line mistake, or the output folder is
in use by another run; 75 stopped by SIGTERM / SIGUSR1 after writing a checkpoint (requeue and
--resume); 130 stopped by Ctrl-C. See docs/reliability.md. The command line itself is
:mod:`detrex_lite.cli.train_net`.
"""
import argparse
import logging
import os
import shlex
import sys
from datetime import timedelta
from typing import List, Optional, Tuple

from detectron2.utils import comm

import detrex_lite.data  # noqa: F401  (registers the demo datasets the configs name)
from detrex_lite.checkpoint import CheckpointError
from detrex_lite.checkpoint.io import peek_meta
from detrex_lite.checkpoint.run import find_run_checkpoint, resolve_num_classes, run_config_path
from detrex_lite.config import (
    apply_overrides_checked,
    check_init_checkpoint,
    check_num_classes,
    check_structure,
    load_config_file,
)
from detrex_lite.errors import (
    ConfigError,
    DatasetError,
    ImageReadError,
    NonFiniteLossError,
    NothingToResumeError,
    OutputDirError,
    OutputWriteError,
)
from detrex_lite.solver import schedule_periods
from detrex_lite.utils import json_io
from detrex_lite.utils.files import write_atomically

from .defaults import build_model, do_test, do_train, load_for_eval
from .errors import INTERRUPT_EXIT_CODE, REQUEUE_EXIT_CODE, TrainingInterrupted
from .launch import launch, launch_slurm
from .output_lock import OutputDirLock
from .preemption import forward_stop_signals_to_children
from .run_setup import default_setup

__all__ = ["check_launch_args", "main", "run", "setup_config"]

logger = logging.getLogger("detrex_lite.train_net")


def _run_folder_arguments(args: argparse.Namespace) -> Tuple[str, List[str], Optional[str]]:
    """(config file, overrides, run folder or None). With ``--run DIR`` (and with ``--resume``
    given no config file but ``train.output_dir=DIR``): DIR/config.yaml and DIR as the output
    folder, unless the command line names them; with --eval-only also DIR's model_best.pth (else
    its newest complete checkpoint)."""
    overrides = [o for o in (args.opts or []) if o != "--"]
    run_dir = getattr(args, "run", None)
    resume = getattr(args, "resume", False)
    if run_dir and not (args.eval_only or resume):
        from .resume_check import train_net_command

        raise ConfigError(
            f"--run {run_dir} is for --eval-only (evaluate the run) or --resume (continue it): "
            f"e.g. '{train_net_command()} --resume --run {shlex.quote(run_dir)}'"
        )
    if resume and not run_dir and not args.config_file:
        given = [o.split("=", 1)[1] for o in overrides if o.startswith("train.output_dir=")]
        if not given:
            raise ConfigError(
                "--resume needs the run to continue: --resume --run DIR (the run's own config.yaml), or "
                "--config-file CONFIG --resume train.output_dir=DIR"
            )
        run_dir = given[-1]
    if not run_dir:
        return args.config_file, overrides, None
    try:
        config_file = args.config_file or run_config_path(run_dir)
        extra = []
        if args.eval_only and not any(o.startswith("train.init_checkpoint=") for o in overrides):
            extra.append(f"train.init_checkpoint={find_run_checkpoint(run_dir)}")
        if not any(o.startswith("train.output_dir=") for o in overrides):
            extra.append(f"train.output_dir={run_dir}")
    except (OSError, CheckpointError) as e:
        raise ConfigError(str(e)) from None
    return config_file, extra + overrides, run_dir


def register_run_datasets(cfg, config_file: str, run_dir: Optional[str], eval_only: bool) -> None:
    """Register the datasets the config needs (with ``eval_only``, the test set's only) that no
    code registered, as the run recorded them
    (``datasets.json`` of the run folder, of the saved config's folder or of the output folder,
    then the metadata of ``train.init_checkpoint``); ConfigError naming a dataset still unknown
    (its closest names and the user's datasets) or a recorded file that is gone."""
    from detectron2.data import DatasetCatalog

    from detrex_lite.data.registration import (
        config_dataset_names,
        read_dataset_records,
        register_recorded_datasets,
        unknown_dataset_message,
    )

    keys = ("dataloader.test.dataset.names", "dataloader.evaluator.dataset_name") if eval_only else None
    needed = config_dataset_names(cfg, keys) if keys else config_dataset_names(cfg)
    folders = [run_dir, os.path.dirname(config_file) if config_file.endswith((".yaml", ".yml")) else None,
               cfg.train.get("output_dir", None)]
    recorded: List[str] = []  # every name the run recorded: candidates for "closest"

    def register(records, source):
        records = records if isinstance(records, dict) else {}
        recorded.extend(n for n in records if n not in recorded)
        register_recorded_datasets({n: records[n] for n in needed if n in records}, source)

    try:
        for folder in dict.fromkeys(f for f in folders if f):
            if not all(name in DatasetCatalog.list() for name in needed):
                register(read_dataset_records(folder), os.path.join(folder, "datasets.json"))
        checkpoint = cfg.train.get("init_checkpoint", "")
        if not all(name in DatasetCatalog.list() for name in needed) and checkpoint:
            register(peek_meta(checkpoint).get("datasets"), checkpoint)
    except DatasetError as e:
        raise ConfigError(str(e)) from None
    for name in needed:
        if name not in DatasetCatalog.list():
            raise ConfigError(unknown_dataset_message(
                name, config_dataset_names(cfg) + [n for n in recorded if n not in config_dataset_names(cfg)],
                hint="register it in the config file (register_coco_dataset, docs/data.md), or use a run folder "
                "(--run DIR) or checkpoint that recorded it"))


def _check_resume(args: argparse.Namespace, cfg, overrides: List[str]) -> None:
    """With --resume into a folder holding a run: the config must be the run's, except for the
    keys this command line sets (:mod:`detrex_lite.engine.resume_check`); the accepted changes
    are kept in ``args.resume_changes`` for the log."""
    from detrex_lite.checkpoint.run import numbered_checkpoints, read_last_checkpoint

    from .resume_check import check_resume_config

    output_dir = cfg.train.output_dir
    saved = os.path.join(output_dir, "config.yaml")
    has_checkpoint = bool(read_last_checkpoint(output_dir) or numbered_checkpoints(output_dir)) or os.path.isfile(
        os.path.join(output_dir, "model_final.pth"))
    if not (os.path.isfile(saved) and has_checkpoint):
        return
    args.resume_changes = check_resume_config(
        cfg, saved, overrides, allow_changed=getattr(args, "resume_changed", False), argv=getattr(args, "argv", None),
        trust_config=getattr(args, "trust_config", False),
    )


def setup_config(args: argparse.Namespace):
    """Load the config, apply the overrides (``args.opts``) and run every check; raises ConfigError."""
    config_file, overrides, run_dir = _run_folder_arguments(args)
    cfg = load_config_file(config_file, trust=getattr(args, "trust_config", False))
    apply_overrides_checked(cfg, overrides)
    check_structure(cfg)
    if args.eval_only and not cfg.train.init_checkpoint:
        raise ConfigError("--eval-only needs weights: add train.init_checkpoint=path/to/model.pth (or --run DIR)")
    register_run_datasets(cfg, config_file, run_dir, args.eval_only)
    check_num_classes(cfg, eval_only=args.eval_only)
    try:  # the saved config.yaml states the class count, loadable without the dataset
        resolve_num_classes(cfg)
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
    resuming = args.resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint"))
    if not resuming:
        check_init_checkpoint(cfg.train.init_checkpoint)
    try:
        schedule_periods(cfg.train)  # fractions of train.max_iter; resolved again at start-up
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.resume and not args.eval_only:
        _check_resume(args, cfg, overrides)
    return cfg


def _log_resume_changes(args: argparse.Namespace, cfg) -> None:
    from .resume_check import describe_changes

    explicit, other = getattr(args, "resume_changes", ([], []))
    saved = os.path.join(cfg.train.output_dir, "config.yaml")
    if explicit:
        logger.info(f"Resuming with changes to {saved} set on the command line: {describe_changes(explicit)}")
    if other:
        logger.warning(f"Resuming with changes to {saved} not set on the command line (--resume-changed): "
                       f"{describe_changes(other)}")


def main(args: argparse.Namespace, cfg=None) -> Optional[dict]:
    """Runs in every process: trains, or with --eval-only evaluates (returns the results).
    `cfg`: the config run() loaded, when this is its process (a config file runs once per
    process: registering a dataset in it works)."""
    if cfg is None:
        cfg = setup_config(args)
    default_setup(cfg, args)  # detrex_lite's: plain-text log.txt, no CUDA_HOME warning on CPU
    if args.resume and not args.eval_only and comm.is_main_process():
        _log_resume_changes(args, cfg)  # compared with the run's config.yaml in setup_config
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
            write_atomically(
                path, lambda f: f.write(json_io.dumps(results, indent=2).encode()),
                advice="free some space and evaluate again",
            )
            logger.info(f"Evaluation results written to {path}")
        return results
    do_train(cfg, resume=args.resume)
    return None


def _spawned_main(args: argparse.Namespace) -> None:
    """main() in a process started by launch(): a run stopped by a signal exits with its code."""
    try:
        main(args)
    except TrainingInterrupted as e:
        # Every rank has run its after_train hooks (rank 0: its last writes) before any leaves;
        # launch's _run_rank then shuts the process group down.
        comm.synchronize()
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # a second Ctrl-C: each worker has said so; no traceback per rank
        raise SystemExit(INTERRUPT_EXIT_CODE) from None


def check_launch_args(args: argparse.Namespace) -> None:
    """--num-gpus / --num-machines / --machine-rank / --dist-url make one job; raises ConfigError."""
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


def run(args: argparse.Namespace) -> int:
    """train_net with parsed arguments (``args.opts``: the overrides, as collect_overrides gives
    them); returns the exit code. Config and command-line mistakes are checked once here, before
    any process is spawned or model built; this process holds the output folder's lock when it
    launches the run's main process."""
    try:
        if not args.slurm:
            check_launch_args(args)
        cfg = setup_config(args)
    except ConfigError as e:
        return _error(e, 2)
    except (DatasetError, ImageReadError) as e:
        return _error(e, 1)
    holds_lock = os.environ.get("SLURM_PROCID", "0") == "0" if args.slurm else args.machine_rank == 0
    lock = OutputDirLock(cfg.train.output_dir)
    if holds_lock:
        try:
            lock.acquire()
        except OutputDirError as e:  # in use by a live run, or not writable
            return _error(e, 2)
        if lock.taken_over:
            print(f"train_net: warning: {lock.taken_over}", file=sys.stderr)
    try:
        return _launch(args, cfg)
    finally:
        if holds_lock:
            lock.release()


def _launch(args: argparse.Namespace, cfg) -> int:
    """Run main() in this process, this SLURM task or spawned processes; the exit code."""
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
    except NothingToResumeError as e:
        return _error(e, 2)
    except (NonFiniteLossError, CheckpointError, OutputWriteError, DatasetError, ImageReadError) as e:
        # single process; with several, the launcher reports the worker's traceback
        return _error(e, 1)
    return 0
