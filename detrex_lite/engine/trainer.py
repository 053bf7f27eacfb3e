"""The training step: loss sum, mixed precision, gradient clipping, EMA and a non-finite guard."""
import logging
import time
from typing import Optional

import torch
from torch import nn

from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from .ema import ModelEMA

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of corrupting the weights."""


def _device_type(model: nn.Module) -> str:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    device = getattr(module, "device", None)
    if device is None:
        device = next(module.parameters()).device
    return torch.device(device).type


class DetrTrainer(SimpleTrainer):
    """detectron2's SimpleTrainer plus what DETR-like training needs.

    Each step: forward (under autocast when AMP is on) -> sum of the model's already-weighted
    losses -> stop with NonFiniteLossError if the sum is NaN/inf (before backward, so the
    weights and the optimizer state stay those of the last good step) -> backward (scaled for
    float16) -> clip the global gradient norm -> optimizer step -> EMA update.

    Args:
        model, data_loader, optimizer: as for SimpleTrainer.
        amp_enabled: run the forward pass under torch.autocast.
        amp_dtype: "float16" (with a GradScaler) or "bfloat16" (no scaler needed).
        clip_grad_params: kwargs of torch.nn.utils.clip_grad_norm_ (max_norm, norm_type), or
            None for no clipping.
        model_ema: a ModelEMA updated after every step, or None.
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

    def run_step(self):
        assert self.model.training, "[DetrTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self._check_finite(losses, loss_dict)

        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)

        if self.clip_grad_params is not None:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, **self.clip_grad_params)
            get_event_storage().put_scalar("grad_norm", float(grad_norm), smoothing_hint=True)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.model_ema is not None:
            self.model_ema.update(self.model)

    def _check_finite(self, losses: torch.Tensor, loss_dict: dict) -> None:
        if bool(torch.isfinite(losses)):
            return
        terms = ", ".join(f"{k}={float(v.detach()):.6g}" for k, v in loss_dict.items())
        last = self.checkpointer.last_checkpoint_path() if self.checkpointer is not None else ""
        raise NonFiniteLossError(
            f"non-finite loss at iteration {self.iter}: {terms}; last good checkpoint: "
            f"{last or 'none saved yet'} (resume from it with --resume, e.g. with a lower lr or "
            "train.amp.enabled=False)"
        )

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler.is_enabled():
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler.is_enabled() and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
