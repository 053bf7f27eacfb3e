"""Multi-scale deformable attention, the sampling core of Deformable DETR (Zhu et al. 2021, eq. 3).

Two implementations with one meaning:

* the compiled operators ``torch.ops.detrex_lite.ms_deform_attn_forward`` / ``..._backward``
  from ``detrex_lite._C`` (csrc/: a multi-threaded CPU kernel and a CUDA kernel), registered
  here with autograd, a fake (meta) implementation for ``torch.compile`` and an autocast rule;
* :func:`ms_deform_attn_pytorch`, a pure-PyTorch reference built on ``F.grid_sample``.

:func:`ms_deform_attn` is the public entry for raw tensors (the official signature): it
validates its inputs, reading ``spatial_shapes`` / ``level_start_index`` back to check them, then
runs the compiled operator when it is built for the input's device, else the reference (warning
once). :class:`~detrex_lite.layers.MultiScaleDeformableAttention` calls
:func:`ms_deform_attn_with_layout` instead, with the :class:`~detrex_lite.layers.LevelLayout` its
model built from the feature shapes: the same checks on shapes, no read-back (no host-device
synchronisation), and an explicit backend ("auto", "compiled" or "pytorch").

dtypes: ``value`` is float64, float32, float16 or bfloat16; ``sampling_locations`` and
``attention_weights`` each have value's dtype, or float32 when value is float16/bfloat16 (what
the module passes: in bfloat16 a location near 0.5 on a 167-pixel-wide map is off by a third of
a pixel). The output and value's gradient have value's dtype, the location and weight gradients
their inputs' dtypes; arithmetic and accumulation are in float64 for float64, float32 otherwise.

Autocast: under ``torch.autocast("cuda", dtype=X)`` value is cast to X and locations and weights
to float32, so the output is X; under CPU autocast all three are cast to float32 (the CPU kernel
computes in float32 anyway) and the output is float32. The rule is applied by
:func:`ms_deform_attn` and, for direct ``torch.ops.detrex_lite.ms_deform_attn_forward`` calls,
by the operator's AutocastCPU/AutocastCUDA kernels registered here.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .level_layout import LevelLayout, host_layout, level_shapes

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "CUDA_KERNELS",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "ms_deform_attn_with_layout",
    "extension_available",
    "OpExtension",
    "EXTENSION",
    "extension_info",
    "level_shapes",
]

# "auto": the compiled operator when it is built for the device, else the reference (warning
# once); "compiled": the compiled operator or an error; "pytorch": the grid_sample reference
# (what tracing / ONNX export needs: standard ops only).
BACKENDS = ("auto", "compiled", "pytorch")

# The CUDA kernel instances of the compiled operator (its `kernel` argument): "auto" picks the
# fastest that applies (what the model uses); the others force a more general instance (the
# generic L/P loop, 1-element packs, 64-bit indexing), so that tests and benchmarks can run each
# on the same inputs. The CPU has one kernel and ignores the choice.
CUDA_KERNELS = ("auto", "generic", "scalar", "index64")

BUILD_HINT = (
    "build it with `pip install --no-build-isolation --no-deps -e .` in the detrex_lite "
    "repository (add FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<your GPU's compute capability>+PTX, e.g. 9.0+PTX, "
    "for CUDA)"
)


class OpExtension:
    """The compiled operator as the Python side sees it: the ``detrex_lite._C`` module (or None
    when it is not built), the device types it has kernels for, and whether the one-time
    fallback warning was given.

    The facts are plain Python values read once, so that a function traced by
    ``torch.compile(fullgraph=True)`` never calls into the compiled module (dynamo cannot trace a
    pybind11 function). :data:`EXTENSION` is the one loaded at import; every function that
    depends on it takes an ``extension`` argument, so a test injects ``OpExtension()`` (a build
    without the extension) instead of reassigning module globals.
    """

    def __init__(self, module: Any = None):
        self.module = module
        self.devices = frozenset() if module is None else frozenset({"cpu", "cuda"} if module.with_cuda() else {"cpu"})
        self.warned = False

    @classmethod
    def load(cls) -> "OpExtension":
        """``detrex_lite._C`` when it imports, else an extension that is not built."""
        try:
            from detrex_lite import _C
        except ImportError as e:
            logger.debug("detrex_lite._C is not available: %s", e)
            return cls(None)
        return cls(_C)

    def available(self, device_type: str) -> bool:
        return self.module is not None and device_type in self.devices

    def info(self) -> dict:
        if self.module is None:
            return {"built": False, "with_cuda": False, "cuda_archs": []}
        archs = [a for a in self.module.cuda_archs().split("+") if a]
        return {"built": True, "with_cuda": bool(self.module.with_cuda()), "cuda_archs": archs}

    def warn_fallback(self, device_type: str) -> None:
        """The one-time warning that the reference implementation runs instead."""
        if self.warned:
            return
        self.warned = True
        reason = (
            "the compiled extension detrex_lite._C is not built"
            if self.module is None
            else f"detrex_lite._C was built without a kernel for {device_type} tensors"
        )
        warnings.warn(
            f"detrex_lite: {reason}; ms_deform_attn falls back to the slower pure-PyTorch "
            f"implementation. To use the compiled operator, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=4,
        )


# The extension this process loaded (an import-time fact, like a registry entry).
EXTENSION = OpExtension.load()


def extension_available(device_type: str = "cpu", extension: Optional[OpExtension] = None) -> bool:
    """Whether the compiled operator (``extension``, by default the loaded one) has a kernel for
    ``device_type`` ("cpu" or "cuda").

    A plain Python value decided when the extension was loaded (no call into ``detrex_lite._C``),
    so it is safe inside ``torch.compile(fullgraph=True)``.
    """
    return (extension or EXTENSION).available(device_type)


def extension_info(extension: Optional[OpExtension] = None) -> dict:
    """What was built: {"built": bool, "with_cuda": bool, "cuda_archs": list[str]}."""
    return (extension or EXTENSION).info()


# ---------------------------------------------------------------------------------------------
# dtypes.
# ---------------------------------------------------------------------------------------------
_VALUE_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}


def _allowed_sample_dtypes(value_dtype: torch.dtype) -> tuple:
    """dtypes that locations and weights may have next to a value of ``value_dtype``."""
    if value_dtype in (torch.float16, torch.bfloat16):
        return (value_dtype, torch.float32)
    return (value_dtype,)


def _autocast_inputs(device_type: str, value, sampling_locations, attention_weights):
    """The autocast rule (module docstring): CUDA value in the autocast dtype, locations and
    weights in float32; on CPU all three in float32. float64 inputs are left alone, as autocast
    does for its own ops."""
    if value.dtype == torch.float64:
        return value, sampling_locations.double(), attention_weights.double()
    value_dtype = torch.get_autocast_dtype("cuda") if device_type == "cuda" else torch.float32
    return value.to(value_dtype), sampling_locations.float(), attention_weights.float()


# ---------------------------------------------------------------------------------------------
# Registration of the compiled operators (only when the extension is built).
# ---------------------------------------------------------------------------------------------
def check_op_devices(op: str, value: torch.Tensor, layout: dict, samples: dict) -> None:
    """The operators' device rule (csrc/vision.cpp ``check_ms_deform_attn_inputs``) for the fake
    (meta) kernels: ``samples`` (sampling_loc, attn_weight, grad_output) on value's device, the
    ``layout`` tensors there or on the CPU.

    The dispatcher sends a call with *any* tensor on the ``meta`` device to the fake kernel, so a
    CPU value next to a meta layout or meta locations would otherwise return ``empty`` CPU
    memory (uninitialised numbers, no error) instead of reaching the C++ check.

    Raises:
        RuntimeError: ``op: <argument> is on <device> but value is on <device>`` (RuntimeError,
            as the C++ kernels raise for the same mistake).
    """
    for name, t in samples.items():
        if t.device != value.device:
            raise RuntimeError(
                f"{op}: {name} is on {t.device} but value is on {value.device}; value, "
                f"{', '.join(samples)} must be on one device"
            )
    for name, t in layout.items():
        if t.device.type != "cpu" and t.device != value.device:
            raise RuntimeError(
                f"{op}: {name} is on {t.device} but value is on {value.device}; spatial_shapes and "
                f"level_start_index must be on the CPU or on value's device"
            )


def _register_compiled_ops() -> None:
    forward_op = "detrex_lite::ms_deform_attn_forward"
    backward_op = "detrex_lite::ms_deform_attn_backward"

    @torch.library.register_fake(forward_op)
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step, kernel="auto"):
        check_op_devices(
            "ms_deform_attn_forward", value, {"spatial_shapes": spatial_shapes, "level_start_index": level_start_index},
            {"sampling_loc": sampling_loc, "attn_weight": attn_weight},
        )
        n, _, m, d = value.shape
        return value.new_empty((n, sampling_loc.shape[1], m * d))

    @torch.library.register_fake(backward_op)
    def _backward_fake(
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight, grad_output, im2col_step, kernel="auto"
    ):
        check_op_devices(
            "ms_deform_attn_backward", value, {"spatial_shapes": spatial_shapes, "level_start_index": level_start_index},
            {"sampling_loc": sampling_loc, "attn_weight": attn_weight, "grad_output": grad_output},
        )
        return torch.empty_like(value), torch.empty_like(sampling_loc), torch.empty_like(attn_weight)

    def _setup_context(ctx, inputs, output):
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step = inputs[:6]
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_loc, attn_weight)
        ctx.im2col_step = im2col_step
        ctx.kernel = inputs[6] if len(inputs) > 6 else "auto"

    def _backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_loc, attn_weight = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = torch.ops.detrex_lite.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_loc, attn_weight,
            grad_output.contiguous(), ctx.im2col_step, ctx.kernel,
        )
        return grad_value, None, None, grad_loc, grad_attn, None, None

    torch.library.register_autograd(forward_op, _backward, setup_context=_setup_context)

    # Not torch.library.register_autocast: it casts every floating input to one dtype, which
    # would either round the locations to 16 bits or run value in float32. The backward op needs
    # no rule: it receives the forward's (already cast) inputs and a grad_output in value's dtype.
    def _autocast_kernel(device_type):
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, _AUTOCAST_KEYS[device_type]))

        def kernel(value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step, kernel="auto"):
            value, sampling_loc, attn_weight = _autocast_inputs(device_type, value, sampling_loc, attn_weight)
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return torch.ops.detrex_lite.ms_deform_attn_forward(
                    value, spatial_shapes, level_start_index, sampling_loc, attn_weight, im2col_step, kernel
                )

        return kernel

    for device_type, key in _AUTOCAST_KEYS.items():
        torch.library.impl(forward_op, key, _autocast_kernel(device_type))


if EXTENSION.module is not None:
    _register_compiled_ops()


# ---------------------------------------------------------------------------------------------
# Reference implementation.
# ---------------------------------------------------------------------------------------------
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
    return _grid_sample_attention(value, level_shapes(spatial_shapes), sampling_locations, attention_weights)


def _grid_sample_attention(
    value: torch.Tensor, shapes: Sequence[Tuple[int, int]], sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`ms_deform_attn_pytorch` with the levels' (H_l, W_l) given on the host."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
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
    sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> Optional[List[Tuple[int, int]]]:
    """Raises ValueError naming the argument at fault. ``sizes``: the layout's host-side
    (H_l, W_l) when the caller built it (a :class:`LevelLayout`); None reads and checks the
    values of ``spatial_shapes`` / ``level_start_index`` (raw tensors from an outside caller).

    Returns:
        the levels' (H_l, W_l), or None under torch.compile / tracing (values not read).
    """
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
        "sampling_locations": (6, "(N, Lq, M, L, P, 2)"),
        "attention_weights": (5, "(N, Lq, M, L, P)"),
    }
    for name, (rank, layout) in expected_rank.items():
        if tensors[name].dim() != rank:
            _fail(name, f"must be {layout}, got shape {tuple(tensors[name].shape)}")
    # the layout's structure: LevelLayout's check (its values are checked below, eager only)
    LevelLayout.check_tensors(spatial_shapes, level_start_index, caller="ms_deform_attn", value_device=value.device)
    for name in ("value", "sampling_locations", "attention_weights"):
        if not tensors[name].is_floating_point():
            _fail(name, f"must be a floating-point tensor, got {tensors[name].dtype}")
    if check_dtypes:
        if value.dtype not in _VALUE_DTYPES:
            _fail("value", f"must be float64, float32, float16 or bfloat16, got {value.dtype}")
        allowed = _allowed_sample_dtypes(value.dtype)
        for name in ("sampling_locations", "attention_weights"):
            if tensors[name].dtype not in allowed:
                expected = " or ".join(str(d) for d in allowed)
                _fail(name, f"must be {expected} for value of dtype {value.dtype}, got {tensors[name].dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if tensors[name].device != value.device:
            _fail(name, f"must be on value's device {value.device}, got {tensors[name].device}")
    if not isinstance(im2col_step, int) or isinstance(im2col_step, bool) or im2col_step <= 0:
        _fail("im2col_step", f"must be a positive int, got {im2col_step!r}")

    n, s, m, _ = value.shape
    num_levels = spatial_shapes.shape[0]
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
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    shapes = _check_layout_values(value, spatial_shapes, level_start_index) if sizes is None else sizes
    total = sum(h * w for h, w in shapes)
    if total != s:
        _fail(
            "spatial_shapes",
            f"{shapes} cover sum(H*W) = {total} positions but value {tuple(value.shape)} has S = {s}",
        )
    return list(shapes)


def _check_layout_values(value, spatial_shapes, level_start_index) -> list:
    """Reads the layout (a synchronisation on the GPU) and checks positive sizes and
    level_start_index == the offsets they imply; returns [(H, W), ...]."""
    return list(LevelLayout.from_tensors(spatial_shapes, level_start_index, caller="ms_deform_attn").sizes)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    kernel: str = "auto",
    extension: Optional[OpExtension] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention (bilinear sampling, zero padding, align_corners=False).

    Args:
        value: (N, S, M, D) flattened multi-level features, S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level in S (exclusive cumulative sum).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; pixel
            x = loc_x * W_l - 0.5. Points outside the map read zeros.
        attention_weights: (N, Lq, M, L, P), usually a softmax over L * P.
        im2col_step: a positive int, kept for compatibility with the official operator;
            it changes nothing (the whole batch is one kernel launch).
        kernel: the compiled operator's CUDA kernel instance, one of :data:`CUDA_KERNELS`
            ("auto": the fastest that applies; the others for tests and benchmarks). The CPU
            kernel and the reference ignore it.
        extension: the compiled operator to use (:class:`OpExtension`); default: the one built.

    Returns:
        (N, Lq, M * D) in value's dtype; under autocast in the autocast dtype on CUDA, float32
        on CPU (module docstring).

    Raises:
        ValueError: naming the argument at fault, before any kernel runs.
    """
    if not isinstance(value, torch.Tensor):  # value.device is read before _validate runs
        _fail("value", f"must be a torch.Tensor, got {type(value).__name__}")
    autocast = autocast_enabled(value.device)
    shapes = _validate(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step,
        check_dtypes=not autocast,
    )
    _check_kernel(kernel)
    return _run(
        value, spatial_shapes, level_start_index, shapes, sampling_locations, attention_weights, im2col_step,
        backend="auto", autocast=autocast, kernel=kernel, extension=extension or EXTENSION,
    )


def ms_deform_attn_with_layout(
    value: torch.Tensor,
    layout: LevelLayout,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    backend: str = "auto",
    kernel: str = "auto",
    extension: Optional[OpExtension] = None,
) -> torch.Tensor:
    """:func:`ms_deform_attn` on a :class:`LevelLayout` built by the caller from the feature
    shapes (what :class:`~detrex_lite.layers.MultiScaleDeformableAttention` uses).

    The layout is trusted: its ``sizes`` are the host-side truth, so nothing is read back from
    the device (no host-device synchronisation). Every shape and dtype is checked as in
    :func:`ms_deform_attn`, and S against ``layout.sizes``.

    Args:
        value, sampling_locations, attention_weights, im2col_step, kernel, extension: as
            :func:`ms_deform_attn`.
        layout: the levels of ``value``'s S axis.
        backend: "auto" (compiled operator when built for the device, else the reference with a
            one-time warning), "compiled" (RuntimeError when not built for the device) or
            "pytorch" (the grid_sample reference: standard ops, e.g. for ONNX export).

    Returns:
        (N, Lq, M * D), as :func:`ms_deform_attn`.
    """
    if backend not in BACKENDS:
        _fail("backend", f"must be one of {BACKENDS}, got {backend!r}")
    _check_kernel(kernel)
    if not isinstance(value, torch.Tensor):
        _fail("value", f"must be a torch.Tensor, got {type(value).__name__}")
    autocast = autocast_enabled(value.device)
    if not torch.jit.is_tracing():  # the traced sizes of an export are the model's own
        _validate(
            value, layout.spatial_shapes, layout.level_start_index, sampling_locations, attention_weights,
            im2col_step, check_dtypes=not autocast, sizes=layout.sizes,
        )
    return _run(
        value, layout.spatial_shapes, layout.level_start_index, layout.sizes, sampling_locations, attention_weights,
        im2col_step, backend=backend, autocast=autocast, kernel=kernel, extension=extension or EXTENSION,
    )


def _check_kernel(kernel: str) -> None:
    if kernel not in CUDA_KERNELS:
        _fail("kernel", f"must be one of {CUDA_KERNELS}, got {kernel!r}")


def _layout_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A layout tensor as the operator takes it: on the CPU (checked on the host) or on value's
    device (checked by the kernels)."""
    return t.contiguous() if t.device.type == "cpu" else t.to(device).contiguous()


def _trusted_layout(
    device: torch.device, sizes: Sequence[Tuple[int, int]], spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The layout tensors to give the compiled operator for a GPU ``value`` when the host-side
    ``sizes`` are trusted (a :class:`LevelLayout`).

    Normally the sizes as CPU tensors in pinned memory: the operator checks a CPU layout on the
    host and copies it with ``non_blocking=True`` (from pinned memory: asynchronous), where a
    layout on the GPU is bounds-checked by the kernels and their error flag read back after the
    launch (a host-device synchronisation per attention layer). While a CUDA graph is being
    captured the layout's own device tensors instead: a captured copy would re-read the host
    buffer at every replay, after it was freed, and the operator does not read the flag back
    during a capture (the kernels' bounds test still keeps every access inside value).

    Raises:
        RuntimeError: captured with a layout that is not on ``value``'s device.
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        if spatial_shapes.device != device or level_start_index.device != device:
            raise RuntimeError(
                f"ms_deform_attn: under CUDA-graph capture the layout must already be on value's device {device} "
                f"(got spatial_shapes on {spatial_shapes.device}, level_start_index on {level_start_index.device}): "
                f"build the LevelLayout with LevelLayout.from_sizes(sizes, {str(device)!r}) or from_features"
            )
        return spatial_shapes, level_start_index
    packed = host_layout(sizes, pin=device.type == "cuda")
    num_levels = len(sizes)
    return packed[: 2 * num_levels].view(num_levels, 2), packed[2 * num_levels:]


def _run(
    value, spatial_shapes, level_start_index, sizes, sampling_locations, attention_weights, im2col_step, *,
    backend: str, autocast: bool, kernel: str = "auto", extension: OpExtension = EXTENSION,
) -> torch.Tensor:
    """The op on validated inputs; ``sizes``: host-side (H_l, W_l), or None to read them from
    ``spatial_shapes`` (reference path only)."""
    device_type = value.device.type
    if autocast:
        value, sampling_locations, attention_weights = _autocast_inputs(
            device_type, value, sampling_locations, attention_weights
        )
    compiled = extension.available(device_type)
    if backend == "compiled" and not compiled:
        raise RuntimeError(
            f"ms_deform_attn: backend='compiled' but detrex_lite._C has no kernel for {device_type} tensors; "
            f"{BUILD_HINT}, or use backend='auto' or 'pytorch'"
        )
    if compiled and backend != "pytorch":
        if sizes is not None and value.device.type != "cpu" and not torch.jit.is_tracing():
            spatial_shapes, level_start_index = _trusted_layout(value.device, sizes, spatial_shapes, level_start_index)
        return torch.ops.detrex_lite.ms_deform_attn_forward(
            value.contiguous(),
            _layout_tensor(spatial_shapes, value.device),
            _layout_tensor(level_start_index, value.device),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
            im2col_step,
            kernel,
        )
    if backend == "auto":
        extension.warn_fallback(device_type)
    # grid_sample needs one dtype: the compiled operator's compute dtype, cast back at the end.
    compute_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    out = _grid_sample_attention(
        value.to(compute_dtype), level_shapes(spatial_shapes) if sizes is None else sizes,
        sampling_locations.to(compute_dtype), attention_weights.to(compute_dtype),
    )
    return out.to(value.dtype)
