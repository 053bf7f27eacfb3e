"""The one padding-mask rule: which cells of a feature level an unpadded image covers.

Images of a batch are zero-padded at the bottom and right to a common size; every feature level
then holds padding cells that attention must ignore. An (h, w) image covers, on a level of stride
s, the top-left ``(ceil(h / s), ceil(w / s))`` cells: what stride-2 convolutions with "same"
padding produce from an h x w input. The model (:meth:`DETRBase.extract_features`), the ONNX
graph (:class:`detrex_lite.export.onnx_export.ExportableDETR`) and the encoder-token count of an
export canvas (:func:`detrex_lite.export.onnx_export.encoder_tokens`) all use the functions here.
"""
from typing import List, Sequence, Tuple, TypeVar, Union

import torch

__all__ = ["padding_masks", "valid_size"]

SizeT = TypeVar("SizeT", int, torch.Tensor)


def valid_size(size: SizeT, stride: int) -> SizeT:
    """``ceil(size / stride)``: the rows (or columns) of a stride-``stride`` level that an image
    side of ``size`` pixels covers.

    Args:
        size: a Python int, or an int64 tensor of any shape (traceable: computed with tensor ops).
        stride: the level's stride in pixels (a Python int).

    Returns:
        the same kind as ``size``: an int, or an int64 tensor of ``size``'s shape. Exact integer
        arithmetic (no float division).
    """
    if isinstance(size, torch.Tensor):
        return torch.div(size + (stride - 1), stride, rounding_mode="floor")
    return (size + stride - 1) // stride


def padding_masks(
    image_sizes: Union[torch.Tensor, Sequence[Tuple[int, int]]],
    features: Sequence[torch.Tensor],
    strides: Sequence[int],
) -> List[torch.Tensor]:
    """Padding masks of each feature level.

    Cell (i, y, x) of level l is padding iff ``y >= ceil(h_i / s_l)`` or ``x >= ceil(w_i / s_l)``
    (:func:`valid_size`), (h_i, w_i) being image i's unpadded size and s_l the level's stride.

    Args:
        image_sizes: (N, 2) int64 tensor, or N pairs of ints (or of (2,) tensors): the unpadded
            (h, w) of each image in pixels. Every size in the result comes from tensor ops and
            shapes, so the masks stay dynamic in a traced (ONNX) graph.
        features: per level (N, C, H_l, W_l); only their shapes and device are read.
        strides: per level, the stride s_l in pixels.

    Returns:
        per level (N, H_l, W_l) bool on the features' device, True at padding.
    """
    if not isinstance(image_sizes, torch.Tensor):
        # Pairs of Python ints; while tracing, detectron2's ImageList holds (2,) size tensors.
        image_sizes = torch.stack([torch.as_tensor(size, dtype=torch.int64) for size in image_sizes])
    if features:
        image_sizes = image_sizes.to(features[0].device)  # one host-to-device copy, not one a level
    masks = []
    for feature, stride in zip(features, strides):
        valid = valid_size(image_sizes, stride)  # (N, 2)
        rows = torch.arange(feature.shape[-2], device=feature.device)
        cols = torch.arange(feature.shape[-1], device=feature.device)
        masks.append((rows[None, :, None] >= valid[:, 0, None, None]) | (cols[None, None, :] >= valid[:, 1, None, None]))
    return masks
