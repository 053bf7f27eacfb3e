"""The training step: loss sum, mixed precision, gradient clipping, EMA and a non-finite guard."""
import logging
import math
import time
from typing import Optional

import torch
from torch import nn

from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from detrex_lite.data import ALL_SKIPPED_MESSAGE, ImageReadError
from detrex_lite.utils.rng import derived_seed, seed_global_rngs

from .divergence import DivergenceWatch
from .ema import ModelEMA
from .errors import NonFiniteLossError, OutputWriteError, non_finite_message

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# What detectron2's MapDataset raises when its mapper returned None for every image it has.
_ALL_SKIPPED = "Sample larger than population"
# Iterations of metric history a checkpoint keeps: the writers' median window (detectron2's 20).
_METRIC_WINDOW = 20
# Errors train_net reports in one line: detectron2's loop need not log their tracebacks.
_ONE_LINE_ERRORS = (NonFiniteLossError, OutputWriteError, ImageReadError)


class _NoTracebackFor(logging.Filter):
    """Drops detectron2's "Exception during training" record for the one-line errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, _ONE_LINE_ERRORS)


def _device_type(model: nn.Module) -> str:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    device = getattr(module, "device", None)
    if device is None:
        device = next(module.parameters()).device
    return torch.device(device).type


class DetrTrainer(SimpleTrainer):
    """detectron2's SimpleTrainer plus what DETR-like training needs.

    Each step: forward (under autocast when AMP is on) -> sum of the model's already-weighted
    losses -> stop with NonFiniteLossError if the sum is NaN/inf, or if the forward pass raised
    FloatingPointError (the Hungarian matcher's costs were NaN/inf) -- before backward, so the
    weights and the optimizer state stay those of the last good step -> backward (scaled for
    float16) -> clip the global gradient norm -> optimizer step -> EMA update.

    Randomness: after fetching its batch, each iteration seeds python ``random``, numpy's and
    torch's global generators with a function of ``(seed, rank, iteration)`` (dropout, the
    model's random draws), so that the draws of an iteration do not depend on the ones before
    it. The checkpoint keeps the seed, the data loader's position (every process's, when the
    loader has ``state_dict``, e.g. detrex_lite.data.ResumableTrainLoader) and the last
    iterations of metric history (the writers' medians); with an unchanged config a resumed run
    then repeats the uninterrupted one.

    On resume (`load_state_dict`), the optimizer's state (moments, step counts) comes from the
    checkpoint but its hyper-parameters (lr, weight decay, betas of every group) stay those of
    the config, so `--resume optimizer.lr=...` takes effect; the schedule (lr_multiplier,
    train.max_iter) always comes from the config.

    Args:
        model, data_loader, optimizer: as for SimpleTrainer.
        amp_enabled: run the forward pass under torch.autocast.
        amp_dtype: "float16" (with a GradScaler) or "bfloat16" (no scaler needed).
        clip_grad_params: kwargs of torch.nn.utils.clip_grad_norm_ (max_norm, norm_type), or
            None for no clipping.
        model_ema: a ModelEMA updated after every step, or None.
        seed: the base of the per-iteration seeds (``train.seed``); None: one drawn from numpy's
            global generator of rank 0, saved in the checkpoint and used again on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        amp_enabled: bool = False,
        amp_dtype: str = "float16",
        clip_grad_params: Optional[dict] = None,
        model_ema: Optional[ModelEMA] = None,
        seed: Optional[int] = None,
    ):
        super().__init__(model, data_loader, optimizer)
        if amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype={amp_dtype!r}: expected one of {sorted(_AMP_DTYPES)}")
        self.amp_enabled = amp_enabled
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self.device_type = _device_type(model)
        use_scaler = amp_enabled and self.amp_dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(self.device_type, enabled=use_scaler)
        self.clip_grad_params = dict(clip_grad_params) if clip_grad_params else None
        self.model_ema = model_ema
        # Set by the caller once the checkpointer exists; named in the non-finite-loss error.
        self.checkpointer = None
        self.divergence = DivergenceWatch()
        self._seed_from_config = seed is not None
        self.seed = int(seed) if seed is not None else int(comm.shared_random_seed())
        # Every process's data loader state after the last batch (None: the loader has none).
        self._loader_states = None
        self._restored_history = {}  # metric name -> [(value, iteration)], from the checkpoint

    def before_train(self):
        storage = getattr(self, "storage", None)  # set by train(); absent when a test calls this alone
        if storage is not None:
            for name, values in self._restored_history.items():
                for value, iteration in values:
                    storage.histories()[name].update(value, iteration)
            self._restored_history = {}
        super().before_train()

    def train(self, start_iter: int, max_iter: int):
        quiet = _NoTracebackFor()
        loop_logger = logging.getLogger("detectron2.engine.train_loop")
        loop_logger.addFilter(quiet)
        try:
            super().train(start_iter, max_iter)
        finally:
            loop_logger.removeFilter(quiet)

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = self._next_batch()
        data_time = time.perf_counter() - start
        self._record_loader_state()
        seed_global_rngs(derived_seed(self.seed, comm.get_rank(), self.iter))

        try:
            with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_enabled):
                loss_dict = self.model(data)
        except FloatingPointError as e:  # the matcher refuses NaN/inf costs
            if isinstance(e, NonFiniteLossError):
                raise
            raise NonFiniteLossError(
                non_finite_message("matching cost", self.iter, str(e), self._last_checkpoint())
            ) from e
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        loss_value = float(losses.detach())
        if not math.isfinite(loss_value):
            self.divergence.observe(self.iter, loss_value)
        self._check_finite(losses, loss_dict)

        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)

        if self.clip_grad_params is not None:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, **self.clip_grad_params))
            if not math.isfinite(grad_norm) and not self.grad_scaler.is_enabled():
                self.divergence.observe(self.iter, loss_value, grad_norm)
                # (with float16 the scaler skips such steps itself.) Clipping by a NaN norm would
                # turn every weight into NaN: stop before the optimizer step.
                terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in loss_dict.items())
                raise NonFiniteLossError(
                    non_finite_message("gradient", self.iter, f"grad_norm={grad_norm} (losses {terms})",
                                       self._last_checkpoint())
                )
            get_event_storage().put_scalar("grad_norm", grad_norm, smoothing_hint=True)
        self.divergence.observe(self.iter, loss_value, grad_norm if self.clip_grad_params is not None else None)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.model_ema is not None:
            self.model_ema.update(self.model)

    def _next_batch(self):
        try:
            return next(self._data_loader_iter)
        except ValueError as e:
            if _ALL_SKIPPED not in str(e):
                raise
            raise ImageReadError(ALL_SKIPPED_MESSAGE) from None

    def _record_loader_state(self) -> None:
        """Keep the loader's position after this batch, of every process (the main process alone
        writes checkpoints): one small all-gather per iteration when several processes train."""
        state_dict = getattr(self.data_loader, "state_dict", None)
        if state_dict is None:
            return
        state = state_dict()
        self._loader_states = comm.all_gather(state) if comm.get_world_size() > 1 else [state]

    def _last_checkpoint(self) -> str:
        """The checkpoint a non-finite stop names: the newest one written before the divergence
        began (see divergence.py), tagged as ``last_checkpoint`` so that ``--resume`` starts
        there; without a detected excursion, the newest one."""
        if self.checkpointer is None:
            return ""
        start = self.divergence.excursion_start
        if start is None or start >= self.iter or not hasattr(self.checkpointer, "checkpoint_before"):
            # no excursion before this iteration: a sudden non-finite value, the newest is good
            return self.checkpointer.last_checkpoint_path()
        return self.checkpointer.checkpoint_before(start, retag=True)

    def _check_finite(self, losses: torch.Tensor, loss_dict: dict) -> None:
        if bool(torch.isfinite(losses)):
            return
        terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in loss_dict.items())
        raise NonFiniteLossError(non_finite_message("loss", self.iter, terms, self._last_checkpoint()))

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler.is_enabled():
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["seed"] = self.seed
        if self._loader_states is not None:
            ret["data_loader"] = self._loader_states
        ret["metric_history"] = self._recent_metric_history()
        return ret

    def _recent_metric_history(self) -> dict:
        """The last _METRIC_WINDOW values of every scalar, {name: [(value, iteration)]}."""
        storage = getattr(self, "storage", None)
        if storage is None:
            return {}
        return {name: list(buffer.values()[-_METRIC_WINDOW:]) for name, buffer in storage.histories().items()}

    def load_state_dict(self, state_dict):
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        super().load_state_dict(state_dict)
        if self.grad_scaler.is_enabled() and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self._keep_configured_hyperparameters(configured)
        if not self._seed_from_config and "seed" in state_dict:
            self.seed = int(state_dict["seed"])
        self._restored_history = dict(state_dict.get("metric_history", {}))
        self._load_loader_state(state_dict.get("data_loader"))

    def _load_loader_state(self, states) -> None:
        load = getattr(self.data_loader, "load_state_dict", None)
        if load is None:
            return
        if states is None:
            logger.warning(
                "The checkpoint has no data loader position (written by an older version or with another "
                "loader): the training data stream starts again from its beginning"
            )
            return
        load(states)
        self._loader_states = list(states)

    def _keep_configured_hyperparameters(self, configured) -> None:
        """Put the config's hyper-parameters back after loading the optimizer's state.

        torch's Optimizer.load_state_dict restores every group's lr / weight decay / betas from
        the checkpoint, which would silently ignore `--resume optimizer.lr=...`. The base lr
        ("initial_lr", which the lr scheduler multiplies) becomes the config's lr.
        """
        changes = []
        for i, (group, wanted) in enumerate(zip(self.optimizer.param_groups, configured)):
            saved_base = group.get("initial_lr", group["lr"])
            base = wanted.get("initial_lr", wanted["lr"])
            if saved_base != base:
                changes.append(f"group {i} lr {saved_base:.6g} -> {base:.6g}")
            for key, value in wanted.items():
                if key not in ("lr", "initial_lr") and group.get(key) != value:
                    changes.append(f"group {i} {key} {group.get(key)} -> {value}")
                group[key] = value
            group["initial_lr"] = base
            group["lr"] = base  # the lr scheduler sets the multiplied value before the first step
        if changes:
            logger.info(
                "Resuming with the config's optimizer settings instead of the checkpoint's: "
                + "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else "")
            )
