"""DETRBase: what every DETR-like detector shares, and the one path through it.

``forward``: inputs -> :meth:`~DETRBase.preprocess_image` -> :meth:`~DETRBase.extract_features`
(backbone + neck, exact padding masks) -> :meth:`~DETRBase.forward_heads` (the model's transformer
and heads) -> training: the criterion on :meth:`~DETRBase.prepare_targets`; eval:
:meth:`~DETRBase.select_detections` (how the model scores boxes) ->
:meth:`~DETRBase.detections_to_instances` (boxes to the original image size).
"""
from typing import ClassVar, Dict, List, Sequence, Tuple

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn
from torch.nn import functional as F

from detrex_lite.checkpoint.family import WeightFamily
from detrex_lite.modeling.padding import padding_masks
from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

__all__ = ["DETRBase", "gather_queries", "select_topk"]


def select_topk(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k over all (query, class) pairs of one or more images.

    Args:
        scores: (B, Q, K) class probabilities.
        k: pairs to keep per image (clipped to Q * K).

    Returns:
        topk_scores (B, k) descending, labels (B, k) class indices, query indices (B, k).
    """
    num_classes = scores.shape[-1]
    k = min(k, scores.shape[1] * num_classes)
    topk_scores, topk_idx = scores.flatten(1).topk(k, dim=1)
    return topk_scores, topk_idx % num_classes, torch.div(topk_idx, num_classes, rounding_mode="floor")


def pad_and_concat(maps: List[torch.Tensor]) -> torch.Tensor:
    """Per-image maps (1, C, h_i, w_i) -> (N, C, max h_i, max w_i), zero-padded at the bottom and
    right; a single map is returned as it is (no copy)."""
    if len(maps) == 1:
        return maps[0]
    feat_h = max(m.shape[-2] for m in maps)
    feat_w = max(m.shape[-1] for m in maps)
    return torch.cat([F.pad(m, (0, feat_w - m.shape[-1], 0, feat_h - m.shape[-2])) for m in maps])


def gather_queries(x: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
    """x (B, Q, C) at query indices (B, k) -> (B, k, C)."""
    return torch.gather(x, 1, query_idx[..., None].expand(-1, -1, x.shape[-1]))


class DETRBase(nn.Module):
    """Base class of DETR-family detectors on detectron2 inputs.

    :meth:`forward` is the one path (module docstring). A model implements two hooks:

    * :meth:`forward_heads` ``(features, masks) -> outputs``: its transformer and prediction
      heads on the neck's levels (a list for every model), criterion-style outputs;
    * :meth:`select_detections` ``(outputs) -> (scores, labels, boxes)``: how it scores boxes.

    Export, the predictor, FLOP counting and the tests call the same hooks. Two more are
    declared, with neutral defaults:

    * :attr:`weight_family`: what the model family knows about its weights (arch facts, class
      heads, released formats), which the loader and the converter ask
      (:class:`~detrex_lite.checkpoint.family.WeightFamily`; docs/architecture.md);
    * :meth:`float32_modules`: what a reduced-precision inference mode keeps in float32.

    Args:
        backbone: a detectron2 ``Backbone`` (dict of named feature maps).
        neck: maps the backbone's dict to a list of levels (finest first) and has
            ``output_shape()`` giving each level's stride (e.g. :class:`ChannelMapper`).
        criterion: ``(outputs, targets) -> dict of weighted losses`` (e.g. :class:`SetCriterion`).
        select_box_nums_for_evaluation: detections kept per image in eval.
        pixel_mean, pixel_std: per-channel normalisation in the input's RGB 0-255 scale.
        batch_invariant_inference: in eval mode run backbone + neck on each image unpadded, then
            zero-pad the feature maps, so that results do not depend on the test batch size
            (padding changes border conv features and GroupNorm statistics). Training always
            runs the padded batch.
        size_divisibility: pad the batch so H and W are multiples of this (0: no constraint).
    """

    # A family declares its own (e.g. ``DeformableDETRWeights()``); this one explains nothing.
    weight_family: ClassVar[WeightFamily] = WeightFamily()

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        criterion: nn.Module,
        select_box_nums_for_evaluation: int = 100,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        batch_invariant_inference: bool = True,
        size_divisibility: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.criterion = criterion
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.batch_invariant_inference = batch_invariant_inference
        self.size_divisibility = size_divisibility
        self.feature_strides = [s.stride for s in neck.output_shape()]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- inputs --------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images.

        Returns:
            ImageList (N, 3, H, W) float, ``image_sizes`` = the unpadded (h, w). Padding masks
            are derived per feature level from ``image_sizes``
            (:func:`detrex_lite.modeling.padding.padding_masks`).
        """
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Instances (abs xyxy in the resized image) -> [{"labels": (n,), "boxes": (n, 4)
        cxcywh normalised by the unpadded image size}]."""
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            h, w = inst.image_size
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
            targets.append({"labels": inst.gt_classes.long(), "boxes": boxes})
        return targets

    # ---- features ------------------------------------------------------------------------
    def _backbone_neck(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.neck(self.backbone(x))

    def extract_features(self, images: ImageList) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Backbone + neck features and their padding masks.

        Returns:
            features: per level (N, C, H_l, W_l), finest first.
            masks: per level (N, H_l, W_l) bool, True at padding (:func:`padding_masks`).
        """
        if self.training or not self.batch_invariant_inference:
            features = self._backbone_neck(images.tensor)
        else:
            # images[i] is the unpadded image (also without size_divisibility padding).
            per_image = [self._backbone_neck(images[i][None]) for i in range(len(images))]
            features = [pad_and_concat([f[level] for f in per_image]) for level in range(len(per_image[0]))]
        return features, padding_masks(images.image_sizes, features, self.feature_strides)

    # ---- the path -----------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 inputs ("image" uint8 (3, H, W) RGB, "height", "width",
                "instances" when training).

        Returns:
            training: dict of weighted losses; eval: [{"instances": Instances}] per image at
            its original size, ``select_box_nums_for_evaluation`` boxes by descending score.
        """
        images = self.preprocess_image(batched_inputs)
        features, masks = self.extract_features(images)
        outputs = self.forward_heads(features, masks)
        if self.training:
            return self.criterion(outputs, self.prepare_targets(batched_inputs))
        scores, labels, boxes = self.select_detections(outputs)
        return self.detections_to_instances(scores, labels, boxes, batched_inputs, images.image_sizes)

    def forward_heads(self, features: List[torch.Tensor], masks: List[torch.Tensor]) -> Dict:
        """The model's transformer and heads.

        Args:
            features: per level (N, C, H_l, W_l), finest first (the neck's output).
            masks: per level (N, H_l, W_l) bool, True at padding.

        Returns:
            criterion-style outputs: "pred_logits" (N, Q, K or K + 1), "pred_boxes" (N, Q, 4)
            normalised cxcywh of the last decoder layer; in training also what the losses need
            ("aux_outputs": earlier layers, first first; "enc_outputs": two-stage proposals).
            In eval only the last layer's heads are computed.
        """
        raise NotImplementedError

    def select_detections(self, outputs: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``select_box_nums_for_evaluation`` best detections per image.

        Args:
            outputs: :meth:`forward_heads`' eval outputs.

        Returns:
            scores (B, k) descending, labels (B, k) int64 class indices, boxes (B, k, 4)
            normalised cxcywh.
        """
        raise NotImplementedError

    def float32_modules(self) -> List[nn.Module]:
        """Modules a reduced-precision inference mode keeps in float32: what turns features into
        scores and box coordinates (a model lists its prediction heads). None by default: the
        base class owns no head. See :func:`detrex_lite.inference.optimize_for_inference`."""
        return []

    @property
    def min_encoder_tokens(self) -> int:
        """The fewest transformer tokens (sum over levels of H_l * W_l) an input must give
        (a two-stage model selects its queries among them); 1 by default."""
        return 1

    # ---- outputs -------------------------------------------------------------------------
    def detections_to_instances(
        self,
        scores: torch.Tensor,
        labels: torch.Tensor,
        boxes: torch.Tensor,
        batched_inputs: List[Dict],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        """Detections to detectron2 results at the original image size.

        Args:
            scores, labels: (B, k); boxes: (B, k, 4) normalised cxcywh relative to the unpadded
                image (:meth:`select_detections`).
            batched_inputs: the model inputs ("height", "width" give the output size).
            image_sizes: the unpadded (h, w) of each input image.

        Returns:
            [{"instances": Instances(pred_boxes abs xyxy, scores, pred_classes)}] per image.
        """
        results = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
            inst = Instances((h, w))
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            inst.pred_boxes = Boxes(box_cxcywh_to_xyxy(boxes[i]) * scale)
            inst.scores = scores[i]
            inst.pred_classes = labels[i]
            out_h, out_w = x.get("height", h), x.get("width", w)
            results.append({"instances": detector_postprocess(inst, out_h, out_w)})
        return results
