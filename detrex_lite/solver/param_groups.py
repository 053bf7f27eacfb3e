"""Optimizer parameter groups: per-name learning-rate multipliers and per-kind weight decay.

A named function with data arguments (no lambdas), so that an optimizer config that uses it
survives `LazyConfig.save` -> `LazyConfig.load`.
"""
from typing import Dict, List, Optional

import torch
from torch import nn

# Modules whose weights are normalisation scales/shifts (weight_decay_norm applies to them).
_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    lr_multipliers: Optional[Dict[str, float]] = None,
    weight_decay_norm: Optional[float] = None,
    weight_decay_embed: Optional[float] = None,
    weight_decay_bias: Optional[float] = None,
) -> List[dict]:
    """Split the trainable parameters of `model` into optimizer parameter groups.

    Args:
        model: the model; parameters with requires_grad=False (e.g. a frozen backbone stem) are
            left out, and a parameter shared under several names is listed once.
        base_lr: the learning rate before multipliers.
        weight_decay: the default weight decay.
        lr_multipliers: {substring: factor}; a parameter whose `named_parameters()` name contains
            the substring gets lr = base_lr * factor (several matching keys multiply), e.g.
            {"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1} as in the
            official Deformable DETR.
        weight_decay_norm: weight decay of normalisation-layer parameters; None = weight_decay
            (the official DETR / Deformable DETR recipes decay every parameter).
        weight_decay_embed: weight decay of nn.Embedding weights (query embeddings); None =
            weight_decay.
        weight_decay_bias: weight decay of parameters named "*bias"; None = weight_decay.

    Returns:
        list of {"params": [...], "lr": float, "weight_decay": float}, one group per distinct
        (lr, weight_decay) pair, in the order the pairs first appear in the model.
    """
    lr_multipliers = dict(lr_multipliers or {})
    groups: Dict[tuple, dict] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            lr = base_lr
            for key, factor in lr_multipliers.items():
                if key in full_name:
                    lr *= factor
            decay = weight_decay
            if isinstance(module, _NORM_TYPES) and weight_decay_norm is not None:
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding) and weight_decay_embed is not None:
                decay = weight_decay_embed
            elif param_name == "bias" and weight_decay_bias is not None:
                decay = weight_decay_bias
            group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay})
            group["params"].append(param)
    if not groups:
        raise ValueError("get_param_groups: the model has no parameter with requires_grad=True")
    return list(groups.values())


def param_group_summary(optimizer: torch.optim.Optimizer) -> str:
    """One line per group: number of tensors / elements, lr and weight decay (for the log)."""
    lines = []
    for i, group in enumerate(optimizer.param_groups):
        numel = sum(p.numel() for p in group["params"])
        lines.append(
            f"group {i}: {len(group['params'])} tensors, {numel} elements, "
            f"lr={group['lr']:.3g}, weight_decay={group.get('weight_decay', 0.0):.3g}"
        )
    return "\n".join(lines)
