#!/usr/bin/env python
"""Train or evaluate a detrex_lite LazyConfig model (detectron2's trainer and COCO evaluation).

Flags come first, then config overrides (key=value, as many as needed). Every override must
name an existing key (`+key=value` adds a new one); config mistakes are reported in one line
(exit code 2) before any model is built. See docs/training.md.
"""
import argparse
import logging
import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `projects` imports

import detrex_lite.data  # noqa: E402,F401  (first: registers the demo datasets, imports detectron2 quietly)
from detectron2.utils import comm  # noqa: E402

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
from detrex_lite.engine import (  # noqa: E402
    atomic_write,
    build_model,
    default_setup,
    do_test,
    NonFiniteLossError,
    do_train,
    launch,
    launch_slurm,
    load_for_eval,
)

logger = logging.getLogger("detrex_lite.train_net")


def setup_config(args):
    """Load the config, apply the overrides and run every check; raises ConfigError."""
    cfg = load_config_file(args.config_file)
    overrides = list(args.opts or [])
    if overrides and overrides[0] == "--":
        overrides = overrides[1:]
    apply_overrides_checked(cfg, overrides)
    check_structure(cfg)
    check_num_classes(cfg, eval_only=args.eval_only)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint"))
    if args.eval_only and not cfg.train.init_checkpoint:
        raise ConfigError("--eval-only needs weights: add train.init_checkpoint=path/to/model.pth")
    if not resuming:
        check_init_checkpoint(cfg.train.init_checkpoint)
    try:
        schedule_periods(cfg.train)  # fractions of train.max_iter; resolved again at start-up
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def main(args):
    """Runs in every process."""
    cfg = setup_config(args)
    default_setup(cfg, args)  # detrex_lite's: plain-text log.txt, no CUDA_HOME warning on CPU
    if args.eval_only:
        model = build_model(cfg)
        load_for_eval(cfg, model)
        model.eval()  # no DDP wrapper: each process evaluates its share of the test set
        results = do_test(cfg, model)
        if comm.is_main_process():
            path = os.path.join(cfg.train.output_dir, "eval_results.json")
            atomic_write(path, lambda f: f.write(json_io.dumps(results, indent=2).encode()))
            logger.info(f"Evaluation results written to {path}")
        return results
    do_train(cfg, resume=args.resume)
    return None


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
        help="continue from the last checkpoint in train.output_dir (start from train.init_checkpoint when there is none)",
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate train.init_checkpoint, no training")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine, one per GPU (default: 1)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines (default: 1)")
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine, 0 .. num-machines - 1 (default: 0)")
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
        "opts",
        nargs=argparse.REMAINDER,
        default=None,
        metavar="key=value",
        help="config overrides after the flags, e.g. train.max_iter=1000 train.output_dir=output/run "
        "(+key=value adds a key)",
    )
    return parser


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
        if args.num_machines > 1 and args.dist_url == "auto" and not args.slurm:
            raise ConfigError("--num-machines > 1 needs --dist-url tcp://<machine 0 address>:<port>")
        cfg = setup_config(args)
    except ConfigError as e:
        print(f"train_net: error: {e}", file=sys.stderr)
        return 2
    timeout = timedelta(seconds=float(cfg.train.get("dist_timeout", 1800)))
    device = cfg.train.get("device", "auto")
    use_cuda = None if device == "auto" else device.startswith("cuda")
    try:
        if args.slurm:
            launch_slurm(main, args=(args,), timeout=timeout, use_cuda=use_cuda)
        else:
            launch(
                main,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
                timeout=timeout,
                use_cuda=use_cuda,
            )
    except NonFiniteLossError as e:  # single process; with several, the launcher reports it
        print(f"train_net: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
