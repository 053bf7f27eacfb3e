"""DETR (Carion et al. 2020): a transformer over single-scale backbone features, set prediction
with a softmax classifier that has a no-object class."""
from typing import Any, ClassVar, Dict, List, Tuple

import torch
from detectron2.layers import ShapeSpec
from torch import nn

from detrex_lite.checkpoint.family import WeightFamily
from detrex_lite.layers import MLP
from detrex_lite.modeling.meta_arch import DETRBase, gather_queries

from ..checkpoint import DETRWeights
from .transformer import DetrTransformer

__all__ = ["DETR"]


class _SingleFeature(nn.Module):
    """The "neck" of DETR: passes one backbone output through unchanged.

    DETR's 1x1 ``input_proj`` is a top-level module of :class:`DETR` (the official name), so the
    neck itself has no parameters; it only tells :class:`DETRBase` which map to use and its stride.
    """

    def __init__(self, input_shapes: Dict[str, ShapeSpec], in_feature: str):
        super().__init__()
        if in_feature not in input_shapes:
            raise ValueError(f"DETR: in_feature {in_feature!r} is not among the backbone outputs {list(input_shapes)}")
        self.in_feature = in_feature
        self.shape = input_shapes[in_feature]

    def output_shape(self) -> List[ShapeSpec]:
        return [self.shape]

    def forward(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        return [features[self.in_feature]]


class DETR(DETRBase):
    """DETR on detectron2 inputs.

    Parameter names follow facebookresearch/detr: ``input_proj`` (1x1 conv C5 -> d),
    ``query_embed``, ``transformer.{encoder,decoder}...``, ``class_embed`` (K + 1 logits, the
    last one "no object"), ``bbox_embed.layers.{0,1,2}``; the backbone is ``backbone``.

    Args:
        backbone: a detectron2 ``Backbone`` whose ``output_shape()`` includes ``in_feature``
            (e.g. :func:`~detrex_lite.modeling.build_resnet` with out_features=["res5"]).
        position_embedding: mask (N, H, W) -> (N, d, H, W), e.g. PositionEmbeddingSine with
            num_pos_feats = d / 2, normalize=True and offset 0 (official DETR).
        transformer: :class:`DetrTransformer`.
        num_classes: K, the number of object classes (the classifier has K + 1 outputs).
        criterion: a :class:`~detrex_lite.modeling.SetCriterion` with loss_class_type="ce_loss".
        num_queries: object queries (100 in the paper).
        in_feature: the backbone output the transformer reads ("res5", stride 32, or stride 16
            in the DC5 variant).
        aux_loss: supervise every decoder layer (the heads are shared across layers).
        select_box_nums_for_evaluation: detections kept per image; at most one per query.
        base_kwargs: ``pixel_mean``, ``pixel_std``, ``batch_invariant_inference``,
            ``size_divisibility``: see :class:`DETRBase`.
    """

    # what the loader and the converter know about this model's weights (projects/detr/checkpoint.py)
    weight_family: ClassVar[WeightFamily] = DETRWeights()

    def __init__(
        self,
        *,
        backbone: nn.Module,
        position_embedding: nn.Module,
        transformer: DetrTransformer,
        num_classes: int,
        criterion: nn.Module,
        num_queries: int = 100,
        in_feature: str = "res5",
        aux_loss: bool = True,
        select_box_nums_for_evaluation: int = 100,
        **base_kwargs: Any,
    ):
        neck = _SingleFeature(backbone.output_shape(), in_feature)
        super().__init__(
            backbone=backbone, neck=neck, criterion=criterion,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation, **base_kwargs,
        )
        if getattr(criterion, "loss_class_type", "ce_loss") != "ce_loss":
            raise ValueError(f"DETR: the criterion must use loss_class_type='ce_loss', got {criterion.loss_class_type!r}")
        if getattr(criterion, "num_classes", num_classes) != num_classes:
            raise ValueError(f"DETR: criterion.num_classes={criterion.num_classes} but num_classes={num_classes}")
        hidden_dim = transformer.d_model
        self.input_proj = nn.Conv2d(neck.shape.channels, hidden_dim, kernel_size=1)
        self.position_embedding = position_embedding
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    def forward_heads(self, features: List[torch.Tensor], masks: List[torch.Tensor]) -> Dict:
        """See :meth:`DETRBase.forward_heads`; DETR reads its one level.

        Args:
            features: [(N, C_backbone, H, W)] the backbone map, zero at padding.
            masks: [(N, H, W)] bool, True at padding.

        Returns:
            "pred_logits" (N, Q, K + 1), "pred_boxes" (N, Q, 4) normalised cxcywh of the last
            decoder layer; in training with aux_loss also "aux_outputs" (first layer first).
        """
        (feature,), (mask,) = features, masks
        src = self.input_proj(feature)
        pos = self.position_embedding(mask).to(src.dtype)
        states = self.transformer(src, mask, self.query_embed.weight, pos).decoder_states  # (L, N, Q, d)
        if not (self.training and self.aux_loss):
            states = states[-1:]  # inference only needs the last layer
        logits = self.class_embed(states)
        boxes = self.bbox_embed(states).sigmoid()
        outputs = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training and self.aux_loss:
            outputs["aux_outputs"] = [{"pred_logits": c, "pred_boxes": b} for c, b in zip(logits[:-1], boxes[:-1])]
        return outputs

    def float32_modules(self) -> List[nn.Module]:
        # What turns decoder states into scores and box coordinates.
        return [self.class_embed, self.bbox_embed]

    def select_detections(self, outputs: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Official post-processing: each query is one detection, its class the most likely real
        class (the no-object probability is dropped, not renormalised); top-k over queries."""
        scores, labels = outputs["pred_logits"].float().softmax(-1)[..., :-1].max(-1)
        scores, query_idx = scores.topk(min(self.select_box_nums_for_evaluation, scores.shape[1]), dim=1)
        return scores, torch.gather(labels, 1, query_idx), gather_queries(outputs["pred_boxes"].float(), query_idx)
