"""The start of a training or evaluation job: output folder, loggers, what is logged, seeding.

detectron2's ``default_setup`` does the same with two side effects this project avoids: it
logs the config file syntax-highlighted for a terminal, which writes ANSI colour codes into
``log.txt``, and its environment report imports ``torch.utils.cpp_extension``, which warns
"No CUDA runtime is found, using CUDA_HOME=..." on every CPU-only machine. Here the log is
plain text (colour only on a terminal) and the full detectron2 environment report is written
only where CUDA is available; on a CPU machine a short version list replaces it.
"""
import argparse
import logging
import os
import platform
import sys

import torch

from detectron2.config import LazyConfig
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from detrex_lite.utils.files import replaced_when_done
from detrex_lite.utils.logger import setup_logger

LOGGER_NAMES = ("detectron2", "fvcore", "detrex_lite")


def environment_summary() -> str:
    """detectron2's environment table on a CUDA machine; versions and CPU threads otherwise."""
    if torch.cuda.is_available():
        from detectron2.utils.collect_env import collect_env_info

        return collect_env_info()
    import detectron2
    import numpy

    import detrex_lite
    from detrex_lite.layers.ms_deform_attn_function import extension_available

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", " ")),
        ("numpy", numpy.__version__),
        ("PyTorch", f"{torch.__version__} (CUDA build {torch.version.cuda}; no GPU visible)"),
        ("detectron2", detectron2.__version__),
        ("detrex_lite", f"{detrex_lite.__version__}, compiled CPU op: {'yes' if extension_available('cpu') else 'no'}"),
        ("CPU", f"{platform.machine()}, torch threads: {torch.get_num_threads()}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def save_config_atomically(cfg, path: str) -> None:
    """``LazyConfig.save(cfg, path)`` through a temporary file renamed over ``path``: a process
    killed while saving leaves the previous file whole."""
    with replaced_when_done(path) as tmp:
        LazyConfig.save(cfg, tmp)


def default_setup(cfg, args: argparse.Namespace) -> logging.Logger:
    """Create ``train.output_dir``, set up the loggers, log the job, save config.yaml and
    datasets.json (:mod:`detrex_lite.data.registration`), seed.

    The same steps as detectron2's ``default_setup`` for a LazyConfig (so its log and
    ``config.yaml`` look the same), without colour codes in the files and without the CUDA_HOME
    warning on CPU machines. Seeds python, numpy and torch with ``train.seed + rank`` (random
    when negative) and sets cudnn.benchmark from ``train.cudnn_benchmark`` unless evaluating.
    """
    output_dir = cfg.train.output_dir
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, rank, names=LOGGER_NAMES)
    logger = logging.getLogger("detrex_lite.engine")

    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + environment_summary())
    logger.info("Command line arguments: " + str(args))
    config_file = getattr(args, "config_file", "")
    if config_file:
        with open(config_file) as f:
            logger.info(f"Contents of args.config_file={config_file}:\n{f.read()}")
    if comm.is_main_process() and output_dir:
        # An evaluation never replaces the training's config.yaml (which --run, Predictor.from_run
        # and export read): it keeps its own settings in eval_config.yaml. A resumed run's
        # config.yaml is replaced only once its checkpoint has loaded (do_train): a config that
        # does not fit the run must not overwrite the run's own.
        name = "eval_config.yaml" if getattr(args, "eval_only", False) else "config.yaml"
        path = os.path.join(output_dir, name)
        if getattr(args, "resume", False) and not getattr(args, "eval_only", False) and os.path.isfile(path):
            logger.info(f"Resuming: {path} is saved once the checkpoint has loaded")
        else:
            save_config_atomically(cfg, path)
            logger.info(f"Full config saved to {path}")
        from detrex_lite.data.registration import config_dataset_names, write_dataset_records

        # how the config's datasets were registered, so that tools given the folder register them
        write_dataset_records(output_dir, config_dataset_names(cfg))

    seed = cfg.train.get("seed", -1)
    seed_all_rng(None if seed < 0 else seed + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(cfg.train.get("cudnn_benchmark", False))
    return logger
