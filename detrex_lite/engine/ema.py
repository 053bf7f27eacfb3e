"""Exponential moving average of a model's weights."""
import contextlib
import logging
from typing import Dict

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ModelEMA:
    """ema <- decay * ema + (1 - decay) * weights, after every optimizer step.

    Floating-point parameters and buffers are averaged; integer buffers (e.g. BatchNorm's
    num_batches_tracked) are copied. The averages live on the model's device, in float32.
    A checkpointable: `state_dict()` / `load_state_dict()`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ModelEMA: decay={decay} must be in [0, 1]")
        self.decay = decay
        self.num_updates = 0
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in _unwrap(model).state_dict().items()
        }

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average at `model`'s current weights (e.g. after loading init weights)."""
        for k, v in _unwrap(model).state_dict().items():
            self.shadow[k].copy_(v.detach())
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = _unwrap(model).state_dict()
        averaged, current = [], []
        for k, ema_value in self.shadow.items():
            value = state[k].detach()
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value.float() if value.dtype != torch.float32 else value)
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def apply_to(self, model: nn.Module):
        """Temporarily load the averaged weights into `model` (e.g. to evaluate them)."""
        module = _unwrap(model)
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow, strict=True)
        try:
            yield module
        finally:
            module.load_state_dict(backup, strict=True)

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s weights with the averaged ones."""
        _unwrap(model).load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"ModelEMA.load_state_dict: missing {sorted(missing)[:5]}")
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k].copy_(v)
        self.num_updates = int(state.get("num_updates", 0))
