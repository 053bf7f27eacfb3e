"""Multi-scale deformable attention, the sampling core of Deformable DETR (Zhu et al. 2021, eq. 3).

Two implementations with one meaning:

* the compiled operators ``torch.ops.detrex_lite.ms_deform_attn_forward`` / ``..._backward``
  from ``detrex_lite._C`` (csrc/: a multi-threaded CPU kernel and a CUDA kernel), registered
  here with autograd, a fake (meta) implementation for ``torch.compile`` and an autocast rule;
* :func:`ms_deform_attn_pytorch`, a pure-PyTorch reference built on ``F.grid_sample``.

:func:`ms_deform_attn` is the public entry: it validates its inputs, then runs the compiled
operator when it is built for the input's device, else the reference (warning once).

Autocast: the operator runs in float32 under autocast (CPU and CUDA): value, sampling locations
and attention weights are cast up. Sampling locations must stay in float32 anyway (in bfloat16 a
location near 0.5 on a 167-pixel-wide map is off by a third of a pixel), and the gather-heavy
kernel gains little from half-precision arithmetic. Called directly with half or bfloat16 inputs
(no autocast), the CUDA kernel computes in float32 and returns the input dtype; on CPU such inputs
are computed in float32 and the result cast back.
"""
from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "extension_available",
    "extension_info",
    "level_shapes",
]

BUILD_HINT = (
    "build it with `pip install --no-build-isolation --no-deps -e .` in the detrex_lite "
    "repository (add FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<your GPU's arch, e.g. 8.0> for CUDA)"
)


def _load_extension():
    try:
        from detrex_lite import _C
    except ImportError as e:
        logger.debug("detrex_lite._C is not available: %s", e)
        return None
    return _C


# Tests replace this with None to simulate a build without the extension.
_C = _load_extension()
_fallback_warned = False


def extension_available(device_type: str = "cpu") -> bool:
    """Whether the compiled operator exists for ``device_type`` ("cpu" or "cuda")."""
    if _C is None:
        return False
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return bool(_C.with_cuda())
    return False


def extension_info() -> dict:
    """What was built: {"built": bool, "with_cuda": bool, "cuda_archs": list[str]}."""
    if _C is None:
        return {"built": False, "with_cuda": False, "cuda_archs": []}
    archs = [a for a in _C.cuda_archs().split("+") if a]
    return {"built": True, "with_cuda": bool(_C.with_cuda()), "cuda_archs": archs}


# ---------------------------------------------------------------------------------------------
# Registration of the compiled operators (only when the extension is built).
# ---------------------------------------------------------------------------------------------
def _register_compiled_ops() -> None:
    forward_op = "detrex_lite::ms_deform_attn_forward"
    backward_op = "detrex_lite::ms_deform_attn_backward"

    @torch.library.register_fake(forward_op)
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step):
        n, _, m, d = value.shape
        return value.new_empty((n, sampling_loc.shape[1], m * d))

    @torch.library.register_fake(backward_op)
    def _backward_fake(
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output, im2col_step
    ):
        return torch.empty_like(value), torch.empty_like(sampling_loc), torch.empty_like(attn_weight)

    def _setup_context(ctx, inputs, output):
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step = inputs
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)
        ctx.im2col_step = im2col_step

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = torch.ops.detrex_lite.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
            grad_output.contiguous(), ctx.im2col_step,
        )
        return grad_value, None, None, grad_loc, grad_attn, None

    torch.library.register_autograd(forward_op, _backward, setup_context=_setup_context)
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(forward_op, device_type, torch.float32)


if _C is not None:
    _register_compiled_ops()


# ---------------------------------------------------------------------------------------------
# Reference implementation.
# ---------------------------------------------------------------------------------------------
def level_shapes(spatial_shapes: torch.Tensor) -> list:
    """(H_l, W_l) of each level of ``spatial_shapes`` (L, 2), for Python loops over the levels.

    Python ints in eager mode. While tracing (``torch.jit.trace`` and the TorchScript-based ONNX
    exporter) 0-dim tensors sliced from ``spatial_shapes`` instead: ``tolist()`` would record the
    trace-time sizes as constants, and a graph exported with a dynamic image size would then fail
    at any other size. Ops that take sizes (``arange``, ``reshape``, ``split``) accept both.
    """
    if torch.jit.is_tracing():
        return [(hw[0], hw[1]) for hw in spatial_shapes.unbind(0)]
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with ``F.grid_sample`` (the reference).

    Args:
        value: (N, S, M, D), the flattened feature maps of all levels, S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        sampling_locations: (N, Lq, M, L, P, 2), normalised (x, y); (0, 0) is the top-left
            corner of the map, (1, 1) the bottom-right (align_corners=False).
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D). Samples outside the map read zeros.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1]; with align_corners=False, -1 and 1 are the outer pixel edges.
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P), summed over levels and points.
    sampled = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (sampled * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Public entry.
# ---------------------------------------------------------------------------------------------
def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is on for ``device``'s type (only CPU and CUDA have a rule)."""
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def _fail(argument: str, message: str) -> None:
    raise ValueError(f"ms_deform_attn: {argument} {message}")


def _validate(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
    check_dtypes: bool,
) -> None:
    tensors = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            _fail(name, f"must be a torch.Tensor, got {type(t).__name__}")
    expected_rank = {
        "value": (4, "(N, S, M, D)"),
        "spatial_shapes": (2, "(L, 2)"),
        "level_start_index": (1, "(L,)"),
        "sampling_locations": (6, "(N, Lq, M, L, P, 2)"),
        "attention_weights": (5, "(N, Lq, M, L, P)"),
    }
    for name, (rank, layout) in expected_rank.items():
        if tensors[name].dim() != rank:
            _fail(name, f"must be {layout}, got shape {tuple(tensors[name].shape)}")
    for name in ("spatial_shapes", "level_start_index"):
        if tensors[name].dtype != torch.int64:
            _fail(name, f"must be int64, got {tensors[name].dtype}")
    for name in ("value", "sampling_locations", "attention_weights"):
        if not tensors[name].is_floating_point():
            _fail(name, f"must be a floating-point tensor, got {tensors[name].dtype}")
    if check_dtypes:
        for name in ("sampling_locations", "attention_weights"):
            if tensors[name].dtype != value.dtype:
                _fail(name, f"must have value's dtype {value.dtype}, got {tensors[name].dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if tensors[name].device != value.device:
            _fail(name, f"must be on value's device {value.device}, got {tensors[name].device}")
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step <= 0:
        _fail("im2col_step", f"must be a positive int, got {im2col_step!r}")

    n, s, m, _ = value.shape
    num_levels = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        _fail("spatial_shapes", f"must be (L, 2) rows of (H, W), got shape {tuple(spatial_shapes.shape)}")
    if level_start_index.shape[0] != num_levels:
        _fail(
            "level_start_index",
            f"must be (L,) = ({num_levels},) like spatial_shapes {tuple(spatial_shapes.shape)}, "
            f"got shape {tuple(level_start_index.shape)}",
        )
    loc_shape = tuple(sampling_locations.shape)
    if loc_shape[0] != n or loc_shape[2] != m or loc_shape[3] != num_levels or loc_shape[5] != 2:
        _fail(
            "sampling_locations",
            f"must be (N, Lq, M, L, P, 2) with N={n}, M={m} (from value {tuple(value.shape)}) and "
            f"L={num_levels} (from spatial_shapes), got shape {loc_shape}",
        )
    if tuple(attention_weights.shape) != loc_shape[:5]:
        _fail(
            "attention_weights",
            f"must be (N, Lq, M, L, P) = {loc_shape[:5]} (from sampling_locations), "
            f"got shape {tuple(attention_weights.shape)}",
        )

    # Checks that read tensor values: eager only (under torch.compile they would be
    # data-dependent and break the graph).
    if torch.compiler.is_compiling():
        return
    shapes = spatial_shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        _fail("spatial_shapes", f"must hold positive (H, W), got {shapes}")
    total = sum(h * w for h, w in shapes)
    if total != s:
        _fail(
            "spatial_shapes",
            f"{shapes} cover sum(H*W) = {total} positions but value {tuple(value.shape)} has S = {s}",
        )
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    if level_start_index.tolist() != starts:
        _fail(
            "level_start_index",
            f"must be the level offsets {starts} implied by spatial_shapes, got {level_start_index.tolist()}",
        )


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"detrex_lite: {reason}; ms_deform_attn falls back to the slower pure-PyTorch "
            f"implementation. To use the compiled operator, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Multi-scale deformable attention (bilinear sampling, zero padding, align_corners=False).

    Args:
        value: (N, S, M, D) flattened multi-level features, S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level in S (exclusive cumulative sum).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; pixel
            x = loc_x * W_l - 0.5. Points outside the map read zeros.
        attention_weights: (N, Lq, M, L, P), usually a softmax over L * P.
        im2col_step: batch chunk per CUDA launch; any batch size works (the last chunk may
            be smaller). Kept for compatibility with the official operator.

    Returns:
        (N, Lq, M * D) in value's dtype (float32 under autocast).

    Raises:
        ValueError: naming the argument at fault, before any kernel runs.
    """
    if not isinstance(value, torch.Tensor):  # value.device is read before _validate runs
        _fail("value", f"must be a torch.Tensor, got {type(value).__name__}")
    autocast = autocast_enabled(value.device)
    _validate(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step,
        check_dtypes=not autocast,
    )
    if autocast:
        # See the module docstring: float32 under autocast.
        value, sampling_locations, attention_weights = (
            t.float() for t in (value, sampling_locations, attention_weights)
        )
    device_type = value.device.type
    if extension_available(device_type):
        out_dtype = value.dtype
        if device_type == "cpu" and out_dtype in (torch.float16, torch.bfloat16):
            value, sampling_locations, attention_weights = (
                t.float() for t in (value, sampling_locations, attention_weights)
            )
        spatial_shapes = spatial_shapes.to(value.device)
        level_start_index = level_start_index.to(value.device)
        out = torch.ops.detrex_lite.ms_deform_attn_forward(
            value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
            im2col_step,
        )
        return out.to(out_dtype)
    if _C is None:
        _warn_fallback("the compiled extension detrex_lite._C is not built")
    else:
        _warn_fallback(f"detrex_lite._C was built without a kernel for {device_type} tensors")
    return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
