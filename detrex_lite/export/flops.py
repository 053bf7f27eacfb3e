"""Parameter and FLOP counting for detrex_lite models (fvcore, through detectron2's tracing
adapter), with FLOP handles for multi-scale deformable attention.

FLOPs follow fvcore's convention: one fused multiply-add counts as one FLOP. The trace runs the
deformable attention with the compiled operator when it is built for the model's device (one
``detrex_lite::ms_deform_attn_forward`` node per layer, counted by
:func:`ms_deform_attn_flop_jit`), else with the ``grid_sample`` reference (counted by
:func:`grid_sample_attention_flop_jit`); both give the same number.
"""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.utils.analysis import FlopCountAnalysis
from fvcore.nn import parameter_count
from fvcore.nn.jit_handles import get_shape
from torch import nn

__all__ = [
    "MS_DEFORM_ATTN_OP_NAME",
    "grid_sample_attention_flop_jit",
    "ms_deform_attn_flops",
    "ms_deform_attn_flop_jit",
    "model_flop_analysis",
    "sdpa_flop_jit",
    "module_breakdown",
    "synthetic_image_inputs",
]

logger = logging.getLogger(__name__)

# How a trace names the compiled deformable attention op (registered in csrc/vision.cpp).
MS_DEFORM_ATTN_OP_NAME = "detrex_lite::ms_deform_attn_forward"


def ms_deform_attn_flops(value_shape: Sequence[int], sampling_locations_shape: Sequence[int]) -> int:
    """FLOPs of one multi-scale deformable attention sampling step.

    Per batch element, query, head, level and point, and for each of the D channels of a head:
    bilinear interpolation reads 4 corners (4 multiply-adds) and the attention weight scales the
    sample (1 multiply-add): ``N * Lq * M * L * P * D * 5``.

    Args:
        value_shape: (N, S, M, D).
        sampling_locations_shape: (N, Lq, M, L, P, 2).
    """
    n, _, m, d = value_shape
    n2, lq, m2, levels, points, _ = sampling_locations_shape
    if (n, m) != (n2, m2):
        raise ValueError(f"value {tuple(value_shape)} and sampling_locations {tuple(sampling_locations_shape)} disagree")
    return n * lq * m * levels * points * d * 5


def ms_deform_attn_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle: inputs are (value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, ...) as in the compiled op's schema."""
    shapes = [get_shape(x) for x in inputs]
    value_shape = shapes[0]
    sampling_shape = next(s for s in shapes[1:] if s is not None and len(s) == 6)
    return ms_deform_attn_flops(value_shape, sampling_shape)


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention`` (used by nn.MultiheadAttention):
    q (..., L, E) k (..., S, E) v (..., S, Ev): Q K^T takes L*S*E multiply-adds and the weighted
    sum of values L*S*Ev, per leading (batch, head) index; softmax is not counted."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    leading = int(np.prod(q[:-2]))
    length, source = q[-2], k[-2]
    return leading * length * source * (q[-1] + v[-1])


def grid_sample_attention_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::grid_sampler`` as the deformable attention reference uses it:
    the output (N*M, D, Lq, P) holds one bilinear sample per channel, query, head and point of
    one level; 4 multiply-adds for the corners plus the attention weighting that follows (fvcore
    counts no elementwise op), so that the total equals :func:`ms_deform_attn_flops`."""
    return int(np.prod(get_shape(outputs[0]))) * 5


def model_flop_analysis(model: nn.Module, inputs: List[Dict]) -> FlopCountAnalysis:
    """detectron2's ``FlopCountAnalysis`` on ``model(inputs)`` with the deformable attention
    counted (module docstring), the trace taken now. The model should be in eval mode.

    ``aten::grid_sampler`` is counted as the deformable attention's reference uses it: a model
    that calls ``grid_sample`` elsewhere gets 5 instead of 4 FLOPs per sample there."""
    from detrex_lite.layers import attention_backend
    from detrex_lite.layers.ms_deform_attn_function import extension_available

    device = next(iter(model.parameters()), torch.empty(0)).device
    backend = "compiled" if extension_available(device.type) else "pytorch"
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(MS_DEFORM_ATTN_OP_NAME, ms_deform_attn_flop_jit)
    analysis.set_op_handle("aten::grid_sampler", grid_sample_attention_flop_jit)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with attention_backend(model, backend), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        analysis.total()  # fvcore traces lazily: trace inside the context
    return analysis


def _strip_adapter_prefix(name: str) -> str:
    # detectron2's TracingAdapter holds the model as ``.model``.
    if name == "model":
        return ""
    return name[len("model."):] if name.startswith("model.") else name


def module_breakdown(
    model: nn.Module, analysis: FlopCountAnalysis = None, max_depth: int = 2
) -> "OrderedDict[str, Dict[str, int]]":
    """Parameters (and FLOPs when ``analysis`` is given) per module, down to ``max_depth``.

    Returns:
        {module name ("" = whole model): {"params": int, "flops": int (if analysis)}}, in
        module registration order.
    """
    params = parameter_count(model)
    flops = {}
    if analysis is not None:
        flops = {_strip_adapter_prefix(k): v for k, v in analysis.by_module().items()}
    rows: "OrderedDict[str, Dict[str, int]]" = OrderedDict()
    for name, _ in [("", model)] + list(model.named_modules())[1:]:
        depth = 0 if name == "" else name.count(".") + 1
        if depth > max_depth:
            continue
        row = {"params": int(params.get(name, 0))}
        if analysis is not None:
            row["flops"] = int(flops.get(name, 0))
        rows[name] = row
    return rows


def synthetic_image_inputs(
    image_size: Sequence[int], device: torch.device, seed: int = 0, generator: Optional[torch.Generator] = None
) -> List[Dict]:
    """One random RGB uint8 image of ``image_size`` (H, W) in the model's input format, drawn
    from ``generator`` when given (successive calls then give different images), else from a
    generator seeded with ``seed``."""
    h, w = image_size
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator).to(device)
    return [{"image": image, "height": h, "width": w}]
