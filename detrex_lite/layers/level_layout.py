"""The level layout of a flattened multi-scale feature sequence, built once per forward.

Multi-scale deformable attention reads L feature maps flattened into one sequence of
S = sum_l H_l * W_l positions. Every layer needs the same facts about that sequence: the (H, W)
of each level on the host (to loop over levels, build reference points, split the sequence) and
the same numbers as device tensors (for the compiled kernel). :class:`LevelLayout` carries both,
built from the feature maps' shapes, so that no layer reads sizes back from the device (a
host-device synchronisation on a GPU) and nothing is remembered between forwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["LevelLayout", "host_layout", "level_shapes", "level_starts"]


def level_starts(sizes: Sequence[Tuple[int, int]]) -> List[int]:
    """Offset of each level in the flattened S axis: the exclusive cumulative sum of H * W."""
    starts = [0]
    for h, w in list(sizes)[:-1]:
        starts.append(starts[-1] + h * w)
    return starts


def level_shapes(spatial_shapes: torch.Tensor) -> list:
    """(H_l, W_l) of each level of ``spatial_shapes`` (L, 2), for Python loops over the levels.

    Python ints in eager mode, read from the tensor (a synchronisation on a GPU: the model passes
    a :class:`LevelLayout` whose ``sizes`` are known on the host instead). While tracing
    (``torch.jit.trace`` and the TorchScript-based ONNX exporter) 0-dim tensors sliced from
    ``spatial_shapes`` instead: ``tolist()`` would record the trace-time sizes as constants, and a
    graph exported with a dynamic image size would then fail at any other size. Ops that take
    sizes (``arange``, ``reshape``, ``split``) accept both.
    """
    if torch.jit.is_tracing():
        return [(hw[0], hw[1]) for hw in spatial_shapes.unbind(0)]
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def _packed_values(sizes: Sequence[Tuple[int, int]]) -> List[int]:
    """H_0, W_0, ..., H_{L-1}, W_{L-1}, then the L level starts."""
    return [v for hw in sizes for v in hw] + level_starts(sizes)


def host_layout(sizes: Sequence[Tuple[int, int]], pin: bool = False) -> torch.Tensor:
    """spatial_shapes and level_start_index of ``sizes`` in one (3 * L,) int64 CPU tensor:
    ``[:2L].view(L, 2)`` and ``[2L:]``. ``pin``: in page-locked memory, so that a copy to a GPU
    with ``non_blocking=True`` is asynchronous (from pageable memory CUDA may first synchronise
    the stream)."""
    packed = torch.tensor(_packed_values(sizes), dtype=torch.int64)
    return packed.pin_memory() if pin and not torch.compiler.is_compiling() else packed


@dataclass(frozen=True)
class LevelLayout:
    """Where each feature level lies in a flattened (N, S, ...) sequence.

    Attributes:
        sizes: ((H_0, W_0), ..., (H_{L-1}, W_{L-1})), Python ints (finest level first). While
            tracing (``torch.jit.trace``, the ONNX exporter) 0-dim traced tensors instead, so that
            a graph exported with a dynamic image size computes them from its input.
        spatial_shapes: (L, 2) int64 on the features' device, the same (H_l, W_l).
        level_start_index: (L,) int64 on the same device, offset of each level in S.

    Build it with :meth:`from_features` (the model) or :meth:`from_sizes`; a layout is never
    modified afterwards.
    """

    sizes: Tuple[Tuple[int, int], ...]
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor

    @classmethod
    def from_sizes(cls, sizes: Sequence[Tuple[int, int]], device: torch.device) -> "LevelLayout":
        """A layout from host-side (H_l, W_l) of each level.

        The two tensors are built on the host in one buffer and, for a CUDA ``device``, copied
        from pinned memory with ``non_blocking=True``: one asynchronous copy, no wait for the
        work already queued (``torch.tensor(..., device="cuda")`` would copy from pageable memory
        and synchronise the stream, twice per forward). While a CUDA graph is being captured
        no host memory is read at all (a replay would read the buffer again, long after it was
        freed): the values are written by fill kernels, which the graph keeps as constants.

        Raises:
            ValueError: ``sizes`` is empty or holds a non-positive or non-integer size.
        """
        try:
            shapes = tuple((int(h), int(w)) for h, w in sizes)
        except (TypeError, ValueError):
            shapes = ()
        if not shapes or not all(h > 0 and w > 0 for h, w in shapes):
            raise ValueError(f"LevelLayout: sizes must be a non-empty list of positive int (H, W), got {list(sizes)}")
        device = torch.device(device)
        num_levels = len(shapes)
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            packed = torch.empty(3 * num_levels, dtype=torch.int64, device=device)
            for i, v in enumerate(_packed_values(shapes)):
                packed[i].fill_(v)
        else:
            packed = host_layout(shapes, pin=device.type == "cuda")
            if device.type != "cpu":
                packed = packed.to(device, non_blocking=True)
        return cls(
            sizes=shapes,
            spatial_shapes=packed[: 2 * num_levels].view(num_levels, 2),
            level_start_index=packed[2 * num_levels:],
        )

    @classmethod
    def from_features(cls, features: Sequence[torch.Tensor]) -> "LevelLayout":
        """The layout of the maps ``features`` (each (N, C, H_l, W_l)), on their device."""
        if not torch.jit.is_tracing():
            return cls.from_sizes([tuple(f.shape[-2:]) for f in features], features[0].device)
        # While tracing, f.shape[-2] is a traced value: torch.tensor() of it would record the
        # trace-time size as a constant and the exported graph would fail at any other size.
        spatial_shapes = torch.stack([torch.stack(list(f.shape[-2:])) for f in features]).to(features[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        return cls(tuple(level_shapes(spatial_shapes)), spatial_shapes, level_start_index)

    @staticmethod
    def check_tensors(
        spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, caller: str = "LevelLayout",
        value_device: Optional[torch.device] = None,
    ) -> None:
        """The layout tensors' structure, without reading their values (the one place the op and
        the layout check it): (L, 2) and (L,) int64 tensors with the same L and, when
        ``value_device`` is given, each on the CPU or on that device (where the operator reads
        them; any other device, the ``meta`` device included, would hand it memory that does not
        hold the layout).

        Raises:
            ValueError: starting with ``caller`` and naming the argument at fault.
        """
        expected = (("spatial_shapes", spatial_shapes, 2, "(L, 2)"), ("level_start_index", level_start_index, 1, "(L,)"))
        for name, t, rank, layout in expected:
            if not isinstance(t, torch.Tensor) or t.dim() != rank or t.dtype != torch.int64:
                got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{caller}: {name} must be an int64 tensor of shape {layout}, got {got}")
            if value_device is not None and t.device.type != "cpu" and t.device != torch.device(value_device):
                raise ValueError(
                    f"{caller}: {name} must be on the CPU or on value's device {value_device}, got {t.device}"
                )
        if spatial_shapes.shape[-1] != 2 or level_start_index.shape[0] != spatial_shapes.shape[0]:
            raise ValueError(
                f"{caller}: spatial_shapes (L, 2) and level_start_index (L,) disagree: shapes "
                f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
            )

    @classmethod
    def from_tensors(
        cls, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, caller: str = "LevelLayout"
    ) -> "LevelLayout":
        """A layout from raw tensors given by an outside caller: reads their values back (a
        host-device synchronisation on a GPU) and checks them. ``caller`` starts the error
        messages.

        Raises:
            ValueError: not (L, 2) / (L,) int64 tensors, on the ``meta`` device (no values),
                non-positive sizes, or level_start_index not the offsets that spatial_shapes
                implies.
        """
        cls.check_tensors(spatial_shapes, level_start_index, caller)
        for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
            if t.device.type == "meta":
                raise ValueError(
                    f"{caller}: {name} is on the meta device: it holds no values to read; give the layout on the "
                    f"CPU or on value's device (or a LevelLayout built from the sizes)"
                )
        sizes = tuple(level_shapes(spatial_shapes))
        if torch.jit.is_tracing():  # traced sizes: nothing to read
            return cls(sizes, spatial_shapes, level_start_index)
        if not all(h > 0 and w > 0 for h, w in sizes):
            raise ValueError(f"{caller}: spatial_shapes must hold positive (H, W), got {list(sizes)}")
        if level_start_index.tolist() != level_starts(sizes):
            raise ValueError(
                f"{caller}: level_start_index must be the level offsets {level_starts(sizes)} implied by "
                f"spatial_shapes, got {level_start_index.tolist()}"
            )
        return cls(sizes, spatial_shapes, level_start_index)
