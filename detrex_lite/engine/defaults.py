"""Building the model, optimizer, trainer and hooks from a LazyConfig; training and testing.

tools/train_net.py is a thin command line around `do_train` and `do_test`.
"""
import copy
import logging
import os
import time
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.config import instantiate
from detectron2.engine import hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from detrex_lite.checkpoint import CheckpointMismatchError, load_weights
from detrex_lite.checkpoint.run import RunMetadata, run_metadata
from detrex_lite.solver.param_groups import param_group_summary
from detrex_lite.solver.schedule import schedule_periods
from detrex_lite.utils.logger import LOG_FILE_ONLY

from .best_checkpoint import BestCheckpointer
from .checkpoint import AtomicCheckpointer, PeriodicCheckpointer
from .display_threshold import EvalHook, record_display_threshold
from .ema import ModelEMA
from .launch import resolve_device
from .preemption import GracefulStop, PreemptionCheckpointer
from .summary import TrainingSummary
from .run_setup import save_config_atomically
from .trainer import DetrTrainer
from .writers import default_writers

logger = logging.getLogger(__name__)


def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False, **kwargs) -> nn.Module:
    """DistributedDataParallel when several processes train (GPU or CPU), else the model itself."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).is_cuda and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


def build_model(cfg) -> nn.Module:
    model = instantiate(cfg.model)
    model.to(torch.device(resolve_device(cfg.train.get("device", "auto"))))
    logger.info("Model:\n{}".format(model), extra=LOG_FILE_ONLY)  # hundreds of lines: log.txt only
    logger.info(f"Model: {model_line(model)} (printout in log.txt)")
    return model


def model_line(model: nn.Module) -> str:
    """``DeformableDETR, 39.8 M parameters (39.7 M trained)``."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{type(model).__name__}, {total / 1e6:.1f} M parameters ({trained / 1e6:.1f} M trained)"


def evaluation_output_dir(cfg) -> Optional[str]:
    """Where the evaluator keeps the predictions: ``<train.output_dir>/inference/<test dataset>``
    (``coco_instances_results.json`` and ``instances_predictions.pth``), unless the evaluator
    config names an output_dir itself."""
    from omegaconf import OmegaConf

    evaluator = cfg.dataloader.evaluator
    if evaluator.get("output_dir", None) or not cfg.train.get("output_dir", None):
        return evaluator.get("output_dir", None)
    name = OmegaConf.select(cfg, "dataloader.evaluator.dataset_name", default=None)
    if name is None:
        name = OmegaConf.select(cfg, "dataloader.test.dataset.names", default="test")
    if not isinstance(name, str):
        name = "+".join(name)
    return os.path.join(cfg.train.output_dir, "inference", name)


def build_evaluator(cfg):
    """cfg.dataloader.evaluator, writing its predictions under :func:`evaluation_output_dir`."""
    evaluator_cfg = copy.deepcopy(cfg.dataloader.evaluator)
    output_dir = evaluation_output_dir(cfg)
    if output_dir and "output_dir" in _evaluator_parameters(evaluator_cfg):
        evaluator_cfg.output_dir = output_dir
    return instantiate(evaluator_cfg)


def _evaluator_parameters(evaluator_cfg) -> set:
    import inspect

    target = evaluator_cfg.get("_target_", None)
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        target = locate(target)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return set()
    return set(params) | ({"output_dir"} if any(p.kind == p.VAR_KEYWORD for p in params.values()) else set())


def do_test(cfg, model: nn.Module, model_ema: Optional[ModelEMA] = None, *, iteration: Optional[int] = None,
            run_meta: Optional[RunMetadata] = None) -> dict:
    """Evaluate `model` (or its EMA weights) on cfg.dataloader.test with cfg.dataloader.evaluator.

    The evaluator writes its predictions under ``<train.output_dir>/inference/<dataset>/``
    (``coco_instances_results.json`` in COCO results format, ``instances_predictions.pth``),
    with the display threshold they suggest (``display_threshold.json``, also put into
    ``run_meta`` for the next checkpoints, with ``iteration``:
    :func:`detrex_lite.engine.display_threshold.record_display_threshold`).

    Returns:
        {task: {metric: value}} as detectron2's evaluators return it (e.g. {"bbox": {"AP": ...}}),
        on the main process; {} elsewhere.
    """
    if "evaluator" not in cfg.dataloader:
        logger.warning("No dataloader.evaluator in the config: skipping evaluation")
        return {}
    evaluator = build_evaluator(cfg)
    data_loader = instantiate(cfg.dataloader.test)
    if model_ema is not None:
        with model_ema.apply_to(model):
            ret = inference_on_dataset(model, data_loader, evaluator)
    else:
        ret = inference_on_dataset(model, data_loader, evaluator)
    if comm.is_main_process() and ret:
        print_csv_format(ret)
        output_dir = evaluation_output_dir(cfg)
        if output_dir and os.path.isdir(output_dir):
            logger.info(f"Predictions written to {output_dir}")
            record_display_threshold(evaluator, output_dir, iteration=iteration, run_meta=run_meta)
    return ret or {}


def load_for_eval(cfg, model: nn.Module) -> nn.Module:
    """Load train.init_checkpoint strictly for evaluation (the EMA weights in it when
    train.model_ema asks for them); a checkpoint of another class count or architecture raises
    CheckpointMismatchError, as does one trained on classes other than the test dataset's."""
    report = load_weights(model, cfg.train.init_checkpoint, purpose="eval", cfg=cfg)
    _check_class_names(cfg, report.meta, cfg.train.init_checkpoint)
    if report.ema:
        logger.info("Evaluating the EMA weights of the checkpoint")
    return model


def _check_class_names(cfg, meta: dict, path: str) -> None:
    """The test dataset must have the classes the checkpoint was trained on (same names, same
    order), when both are known."""
    from omegaconf import OmegaConf

    from detrex_lite.data.classes import ClassInfo

    stored = ClassInfo.from_meta(meta)
    names = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    if stored is None or names is None:
        return
    for name in [names] if isinstance(names, str) else list(names):
        tested = ClassInfo.of_registered(name)  # None: not registered, or no class names
        if tested is not None and tested.names != stored.names:
            trained, classes = list(stored.names), list(tested.names)
            raise CheckpointMismatchError(
                f"{path}: trained on the classes {list(trained)[:5]}{'...' if len(trained) > 5 else ''} "
                f"but dataset {name} has {list(classes)[:5]}{'...' if len(classes) > 5 else ''}: "
                "evaluate on a dataset with the same classes in the same order"
            )


def do_train(cfg, resume: bool = False) -> DetrTrainer:
    """Train as cfg says; with resume, continue from the last checkpoint in train.output_dir.

    SIGTERM / SIGUSR1 / a first Ctrl-C end the run after the current iteration with a checkpoint
    and TrainingInterrupted (see detrex_lite.engine.preemption).
    """
    stop = GracefulStop()
    with stop.installed():
        return _do_train(cfg, resume, stop)


def _do_train(cfg, resume: bool, stop: GracefulStop) -> DetrTrainer:
    started = time.perf_counter()
    run_config = copy.deepcopy(cfg) if resume else None  # as given: the model object is put in cfg below
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    logger.info("Optimizer parameter groups:\n" + param_group_summary(optimizer))
    ema_cfg = cfg.train.get("model_ema", {})
    model_ema = ModelEMA(model, decay=ema_cfg.get("decay", 0.9998)) if ema_cfg.get("enabled", False) else None

    train_loader = instantiate(cfg.dataloader.train)
    ddp_model = create_ddp_model(model, **cfg.train.ddp)
    amp = cfg.train.get("amp", {})
    clip = cfg.train.get("clip_grad", {})
    trainer = DetrTrainer(
        ddp_model,
        train_loader,
        optimizer,
        amp_enabled=amp.get("enabled", False),
        amp_dtype=amp.get("dtype", "float16"),
        clip_grad_params=dict(clip.params) if clip.get("enabled", False) else None,
        model_ema=model_ema,
        seed=cfg.train.seed if cfg.train.get("seed", -1) >= 0 else None,
    )
    run_meta = RunMetadata(run_metadata(cfg, model))
    checkpointables = {"trainer": trainer, "meta": run_meta}
    if model_ema is not None:
        checkpointables["model_ema"] = model_ema
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, **checkpointables)
    trainer.checkpointer = checkpointer

    def test_fn():
        return do_test(cfg, model, model_ema, iteration=trainer.storage.iter, run_meta=run_meta)

    # Fractions of train.max_iter become iterations here, so they follow a max_iter override.
    periods = schedule_periods(cfg.train)
    beyond = " (longer than the run: model_final only)" if periods.checkpoint_period > cfg.train.max_iter else ""
    logger.info(
        f"Schedule: {cfg.train.max_iter} iterations; evaluation every {periods.eval_period or cfg.train.max_iter} "
        f"(train.eval_period={cfg.train.eval_period}), checkpoint every {periods.checkpoint_period} "
        f"(train.checkpointer.period={cfg.train.checkpointer.period}){beyond}"
    )
    max_to_keep = cfg.train.checkpointer.get("max_to_keep", None)
    best_cfg = cfg.train.get("best_checkpoint", {})
    best = BestCheckpointer(
        checkpointer, best_cfg.get("metric", "bbox/AP"), best_cfg.get("mode", "max"), save=best_cfg.get("enabled", True)
    ) if comm.is_main_process() and best_cfg.get("metric", "bbox/AP") else None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            # Before the checkpointer: a checkpoint holds the display threshold of its iteration's evaluation
            # (stored with the iteration metrics.json gives the evaluation).
            EvalHook(periods.eval_period, test_fn),
            best,  # model_best.pth: after the EvalHook, whose results it reads
            PeriodicCheckpointer(checkpointer, periods.checkpoint_period, max_to_keep=max_to_keep)
            if comm.is_main_process()
            else None,
            PreemptionCheckpointer(stop, checkpointer, period=periods.checkpoint_period),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
            TrainingSummary(checkpointer, best, started) if comm.is_main_process() else None,  # last
        ]
    )

    checkpoint = checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    if run_config is not None and comm.is_main_process() and cfg.train.output_dir:
        # default_setup left a resumed run's config.yaml alone until its checkpoint loaded
        save_config_atomically(run_config, os.path.join(cfg.train.output_dir, "config.yaml"))
    start_iter = 0
    if checkpointer.resumed:
        # The checkpoint's "iteration" is the last finished one.
        start_iter = checkpoint.get("iteration", -1) + 1
        if start_iter >= cfg.train.max_iter:
            # Training again would only repeat the final evaluation (a second row in metrics.json).
            logger.info(
                f"Nothing to resume: {cfg.train.output_dir} finished training at iteration {start_iter} "
                f"of train.max_iter={cfg.train.max_iter} (raise train.max_iter to train longer; "
                "--eval-only to evaluate)"
            )
            return trainer
        logger.info(f"Resuming at iteration {start_iter}")
    elif model_ema is not None:
        model_ema.reset(model)  # average from the loaded init_checkpoint, not the random init
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer
