"""ONNX export of DETR-family detectors (Deformable DETR one-stage, box refinement, two-stage; DETR)
and the onnxruntime parity check.

The exported graph's contract (see docs/tools.md):

Inputs
    ``images``: (B, 3, H, W) float32, normalised ((rgb - pixel_mean) / pixel_std); images of a
    batch are zero-padded at the bottom/right to a common H x W. B, H and W are dynamic (unless
    exported with ``dynamic_size=False``: then H x W is fixed to the export canvas).
    ``image_sizes``: (B, 2) int64, the unpadded (height, width) of each image in the batch.

Outputs (``output="detections"``, the default)
    ``scores`` (B, k) float32 descending, ``labels`` (B, k) int64 contiguous class ids,
    ``boxes`` (B, k, 4) float32 absolute (x0, y0, x1, y1) in the unpadded input image's pixels,
    clipped to it (multiply by original / resized size to go back to the original image). k is
    the model's ``select_box_nums_for_evaluation``, chosen by the model's own
    ``select_detections`` as in evaluation (Deformable DETR: top-k over query x class; DETR: one
    per query);
    unlike detectron2's ``detector_postprocess``, empty boxes are kept (fixed output shape).
Outputs (``output="raw"``)
    ``pred_logits`` (B, Q, K or K+1) and ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h).

Metadata (the file's ``metadata_props``, JSON strings, for code that runs the graph without
torch, e.g. :mod:`detrex_lite.export.onnx_predictor`)
    ``format`` ("detections" or "raw"), ``input_format`` ("RGB"), ``pixel_mean`` and
    ``pixel_std`` (3 floats each, 0-255 scale), plus what the caller adds
    (``tools/export_onnx.py``: ``test_resize`` and ``class_names``, see
    :func:`detrex_lite.export.onnx_tool.deployment_metadata`).

The graph runs the model's own hooks (:meth:`DETRBase.forward_heads`,
:meth:`DETRBase.select_detections`) on an already padded batch. The deformable attention runs
through its pure-PyTorch backend (``grid_sample``, opset >= 16) during export, chosen with
:func:`detrex_lite.layers.attention_backend`. Every size inside the graph (feature-map sizes,
``spatial_shapes``, reference points, two-stage proposals, padding masks) is computed from the
input's shape; the models keep Python numbers in eager mode and switch to traced values only
while tracing (``torch.jit.is_tracing()``, see :meth:`LevelLayout.from_features`).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detrex_lite.layers import attention_backend
from detrex_lite.modeling.meta_arch import DETRBase
from detrex_lite.modeling.padding import padding_masks, valid_size
from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy
from detrex_lite.utils.files import replaced_when_done

__all__ = [
    "ExportableDETR",
    "check_onnx_parity",
    "encoder_tokens",
    "export_onnx",
    "graph_metadata",
    "prepare_export_inputs",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 16  # GridSample


def encoder_tokens(model: nn.Module, height: int, width: int) -> int:
    """Number of transformer tokens (sum over levels of H_l * W_l) for an (height, width) input,
    with the model's feature strides (a stride-s map of an h-pixel side has ceil(h / s) rows,
    :func:`detrex_lite.modeling.padding.valid_size`)."""
    return sum(valid_size(height, s) * valid_size(width, s) for s in model.feature_strides)


class ExportableDETR(nn.Module):
    """A DETR-family model as a tensor-in/tensor-out module (see the module docstring).

    It runs the model's eval path (backbone, neck, :meth:`DETRBase.forward_heads`,
    :meth:`DETRBase.select_detections`) on an already normalised, padded batch, with masks
    computed from ``image_sizes``.

    Args:
        model: a :class:`DETRBase` (DeformableDETR, DETR).
        output: "detections" (top-k scores/labels/boxes) or "raw" (logits, normalised boxes).
    """

    def __init__(self, model: DETRBase, output: str = "detections"):
        super().__init__()
        if output not in ("detections", "raw"):
            raise ValueError(f"output must be 'detections' or 'raw', got {output!r}")
        if not isinstance(model, DETRBase):
            raise TypeError(f"ExportableDETR: expected a DETRBase model, got {type(model).__name__}")
        self.model = model
        self.output = output

    @property
    def output_names(self) -> List[str]:
        return ["scores", "labels", "boxes"] if self.output == "detections" else ["pred_logits", "pred_boxes"]

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """images: (B, 3, H, W) normalised, padded; image_sizes: (B, 2) int64 (h, w)."""
        model = self.model
        features = model.neck(model.backbone(images))
        masks = padding_masks(image_sizes, features, model.feature_strides)
        outputs = model.forward_heads(features, masks)
        if self.output == "raw":
            return outputs["pred_logits"], outputs["pred_boxes"]
        topk_scores, labels, topk_boxes = model.select_detections(outputs)
        hw = image_sizes.to(topk_boxes.dtype)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=-1)[:, None]
        # Clipped to the image as detectron2's detector_postprocess does.
        boxes_xyxy = torch.min(torch.clamp(box_cxcywh_to_xyxy(topk_boxes) * scale, min=0), scale)
        return topk_scores, labels, boxes_xyxy


def graph_metadata(model: nn.Module, output: str) -> Dict[str, str]:
    """What a caller needs to prepare the graph's input without the model: the output format,
    the channel order and the normalisation (``pixel_mean``/``pixel_std``, RGB, 0-255), as JSON
    strings for the ONNX file's ``metadata_props``."""
    return {
        "format": json.dumps(output),
        "input_format": json.dumps("RGB"),
        "pixel_mean": json.dumps([float(v) for v in model.pixel_mean.detach().cpu().flatten()]),
        "pixel_std": json.dumps([float(v) for v in model.pixel_std.detach().cpu().flatten()]),
    }


def prepare_export_inputs(
    model: nn.Module, images: Sequence[torch.Tensor], canvas: Optional[Tuple[int, int]] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Model-input images -> the exported graph's (images, image_sizes).

    Args:
        model: provides ``pixel_mean`` / ``pixel_std`` (RGB, 0-255).
        images: (3, h, w) uint8 RGB, already resized as the test mapper does.
        canvas: (H, W) to pad to; default: the largest h and w of the batch.

    Returns:
        images (B, 3, H, W) float32 normalised and zero-padded; image_sizes (B, 2) int64.
    """
    sizes = [tuple(img.shape[-2:]) for img in images]
    if canvas is None:
        canvas = (max(h for h, _ in sizes), max(w for _, w in sizes))
    for h, w in sizes:
        if h > canvas[0] or w > canvas[1]:
            raise ValueError(f"image of size {(h, w)} does not fit the export canvas {tuple(canvas)}")
    mean = model.pixel_mean.detach().cpu().view(3, 1, 1)
    std = model.pixel_std.detach().cpu().view(3, 1, 1)
    batch = torch.zeros((len(images), 3, canvas[0], canvas[1]), dtype=torch.float32)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        batch[i, :, :h, :w] = (img.cpu().float() - mean) / std
    return batch, torch.tensor(sizes, dtype=torch.int64)


def export_onnx(
    model: nn.Module,
    path: str,
    canvas: Tuple[int, int],
    *,
    output: str = "detections",
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamic_size: bool = True,
    sample_batch_size: int = 1,
    metadata: Optional[Dict[str, str]] = None,
) -> ExportableDETR:
    """Exports ``model`` (put in eval mode, on CPU) to ``path``; returns the exported wrapper.

    Args:
        canvas: (H, W) of the sample input traced; with ``dynamic_size=False`` the fixed size
            of the padded input the graph takes (smaller images are given with their
            ``image_sizes``).
        dynamic_batch: mark the batch axis dynamic.
        dynamic_size: mark H and W dynamic. Two-stage models need at least ``num_queries``
            encoder tokens (sum of the levels' H_l * W_l) at run time: the proposal top-k has a
            fixed k in the graph.
        metadata: more ``metadata_props`` (key -> JSON string) written with
            :func:`graph_metadata`'s.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: GridSample (deformable attention) needs opset >= {MIN_OPSET}")
    model = model.eval().cpu()
    wrapper = ExportableDETR(model, output=output).eval()
    if encoder_tokens(model, *canvas) < model.min_encoder_tokens:
        raise ValueError(
            f"export canvas {tuple(canvas)} gives {encoder_tokens(model, *canvas)} encoder tokens, fewer than the "
            f"{model.min_encoder_tokens} queries that two-stage selects from them: use a larger canvas"
        )
    # A sample with one image smaller than the canvas, so padding masks are exercised.
    generator = torch.Generator().manual_seed(0)
    h, w = canvas
    samples = [
        torch.randint(0, 256, (3, h if i == 0 else max(h * 3 // 4, 1), w if i == 0 else max(w * 2 // 3, 1)),
                      dtype=torch.uint8, generator=generator)
        for i in range(sample_batch_size)
    ]
    images, image_sizes = prepare_export_inputs(model, samples, canvas)
    dynamic_axes = {}
    if dynamic_batch or dynamic_size:
        image_axes = {}
        if dynamic_batch:
            image_axes[0] = "batch"
        if dynamic_size:
            image_axes.update({2: "height", 3: "width"})
        dynamic_axes["images"] = image_axes
        if dynamic_batch:
            dynamic_axes["image_sizes"] = {0: "batch"}
            for name in wrapper.output_names:
                dynamic_axes[name] = {0: "batch"}
    # Written beside ``path`` and renamed over it once checked: a process killed meanwhile leaves
    # the previous file whole (it used to leave a 0-byte model.onnx that onnx.load accepts).
    with replaced_when_done(path) as tmp:
        _export_checked(wrapper, images, image_sizes, tmp, dynamic_axes, opset)
        _write_metadata(tmp, {**graph_metadata(model, output), **(metadata or {})})
    logger.info(
        "Exported %s to %s (opset %d, %s)", type(model).__name__, path, opset,
        "dynamic height and width" if dynamic_size else f"fixed canvas {h}x{w}",
    )
    return wrapper


def _export_checked(wrapper, images, image_sizes, path: str, dynamic_axes, opset: int) -> None:
    """``torch.onnx.export`` of ``wrapper`` to ``path``, then onnx's model check of the file."""
    with attention_backend(wrapper.model, "pytorch"), torch.no_grad(), warnings.catch_warnings():
        # The remaining tracer warnings are about sizes that are fixed by the model (last dims of
        # reference points, the query count), not by the image size.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (images, image_sizes),
            path,
            input_names=["images", "image_sizes"],
            output_names=wrapper.output_names,
            dynamic_axes=dynamic_axes or None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(onnx.load(path))


def _write_metadata(path: str, metadata: Dict[str, str]) -> None:
    """Sets the ONNX file's ``metadata_props`` to ``metadata`` (key -> string), in place."""
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


# Two detections whose scores differ by less than this may legitimately sort in either order.
_TIE_TOL = 1e-5


def _matched_topk_diff(
    scores_ref: np.ndarray, labels_ref: np.ndarray, boxes_ref: np.ndarray,
    scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray, tie_tol: float,
) -> Tuple[float, float]:
    """Max score and box differences between two sorted top-k lists.

    Position i of one list is compared with position i of the other, except that near-ties
    (same label, scores within ``tie_tol``) may have swapped places: then the closest such
    entry counts. Scores are sorted, so comparing them position by position is exact.
    """
    score_diff = float(np.abs(scores_ref - scores).max()) if scores.size else 0.0
    box_diff = 0.0
    for b in range(scores.shape[0]):
        for i in range(scores.shape[1]):
            candidates = [float(np.abs(boxes[b, i] - boxes_ref[b, i]).max())] if labels[b, i] == labels_ref[b, i] else []
            ties = np.nonzero((np.abs(scores_ref[b] - scores[b, i]) <= tie_tol) & (labels_ref[b] == labels[b, i]))[0]
            candidates += [float(np.abs(boxes[b, i] - boxes_ref[b, j]).max()) for j in ties]
            box_diff = max(box_diff, min(candidates) if candidates else math.inf)
    return score_diff, box_diff


def _matched_query_diff(
    logits_ref: np.ndarray, boxes_ref: np.ndarray, logits: np.ndarray, boxes: np.ndarray, atol: float
) -> Tuple[float, float, int]:
    """Max logit and box differences query by query, letting queries swap places.

    Two-stage models order their queries by a top-k over encoder proposal scores, where
    near-equal scores may sort differently in two runtimes: a query whose outputs differ by more
    than ``atol`` from the same position is compared with the closest query instead.

    Returns:
        (max logit diff, max box diff, number of queries matched at another position).
    """
    logit_diff = np.abs(logits - logits_ref).max(-1)  # (B, Q)
    box_diff = np.abs(boxes - boxes_ref).max(-1)
    reordered = 0
    for b, q in zip(*np.nonzero(np.maximum(logit_diff, box_diff) > atol)):
        cost = np.maximum(
            np.abs(logits[b, q][None] - logits_ref[b]).max(-1), np.abs(boxes[b, q][None] - boxes_ref[b]).max(-1)
        )
        j = int(cost.argmin())
        logit_diff[b, q] = np.abs(logits[b, q] - logits_ref[b, j]).max()
        box_diff[b, q] = np.abs(boxes[b, q] - boxes_ref[b, j]).max()
        reordered += int(j != q)
    return float(logit_diff.max()), float(box_diff.max()), reordered


def check_onnx_parity(
    path: str, wrapper: ExportableDETR, images: torch.Tensor, image_sizes: torch.Tensor, atol: float = 1e-3
) -> Dict[str, float]:
    """Runs the ONNX file with onnxruntime (CPU) and ``wrapper`` in PyTorch on the same inputs.

    Returns:
        max absolute differences per output and ``ok`` (all within ``atol``). Raw outputs are
        compared query by query (``queries_reordered`` counts the queries that matched another
        position, see :func:`_matched_query_diff`); detections position by position with
        near-ties allowed to swap (``boxes`` normalised by the image size, ``boxes_px`` in
        pixels).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": images.numpy(), "image_sizes": image_sizes.numpy()})
    # PyTorch runs what was exported (the grid_sample path of the deformable attention).
    with torch.no_grad(), attention_backend(wrapper, "pytorch"):
        torch_out = [t.numpy() for t in wrapper(images, image_sizes)]
    diffs: Dict[str, float] = {}
    if wrapper.output == "raw":
        (logits_ref, boxes_ref), (logits, boxes) = torch_out, onnx_out
        diffs["pred_logits"], diffs["pred_boxes"], diffs["queries_reordered"] = _matched_query_diff(
            logits_ref, boxes_ref, logits, boxes, atol
        )
        ok = diffs["pred_logits"] <= atol and diffs["pred_boxes"] <= atol
    else:
        # Boxes compared normalised by the image size (like pred_boxes); pixels reported too.
        hw = image_sizes.numpy().astype(np.float64)
        scale = np.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None]
        (s_ref, l_ref, b_ref), (s_got, l_got, b_got) = torch_out, onnx_out
        diffs["scores"], diffs["boxes"] = _matched_topk_diff(
            s_ref, l_ref, b_ref / scale, s_got, l_got, b_got / scale, tie_tol=_TIE_TOL
        )
        _, diffs["boxes_px"] = _matched_topk_diff(s_ref, l_ref, b_ref, s_got, l_got, b_got, tie_tol=_TIE_TOL)
        ok = diffs["scores"] <= atol and diffs["boxes"] <= atol
    diffs["ok"] = bool(ok)
    return diffs
