"""Deformable DETR (Zhu et al. 2021): one-stage, box refinement and two-stage variants."""
import copy
import math
from typing import Any, ClassVar, Dict, List, Tuple

import torch
from torch import nn

from detrex_lite.checkpoint.family import WeightFamily
from detrex_lite.layers import MLP
from detrex_lite.modeling.meta_arch import DETRBase, gather_queries, select_topk

from ..checkpoint import DeformableDETRWeights
from .deformable_transformer import DeformableTransformer

__all__ = ["DeformableDETR"]


class DeformableDETR(DETRBase):
    """Deformable DETR on detectron2 inputs.

    Args:
        backbone, neck, base_kwargs (``pixel_mean``, ``pixel_std``, ``batch_invariant_inference``,
            ``size_divisibility``): see :class:`DETRBase`. The neck must give
            ``transformer.num_feature_levels`` levels of ``transformer.d_model`` channels.
        position_embedding: mask (N, H, W) -> (N, d_model, H, W), e.g. PositionEmbeddingSine
            with num_pos_feats = d_model / 2 and offset -0.5.
        transformer: :class:`DeformableTransformer` (two_stage must equal ``as_two_stage``).
        num_classes: K (sigmoid classification, no background class).
        num_queries: object queries (300 in the paper).
        criterion: a :class:`~detrex_lite.modeling.SetCriterion`.
        aux_loss: supervise every decoder layer.
        with_box_refine: per-layer heads that refine the reference boxes (Sec. 4.1).
        as_two_stage: queries from encoder proposals (Sec. 4.1); needs ``with_box_refine`` in
            the paper's "two-stage" row, which this class allows but does not force.
        select_box_nums_for_evaluation: detections kept per image (top-k over query x class).
    """

    # what the loader and the converter know about this model's weights (projects/deformable_detr/checkpoint.py)
    weight_family: ClassVar[WeightFamily] = DeformableDETRWeights()

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        position_embedding: nn.Module,
        transformer: DeformableTransformer,
        num_classes: int,
        criterion: nn.Module,
        num_queries: int = 300,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        select_box_nums_for_evaluation: int = 100,
        **base_kwargs: Any,
    ):
        super().__init__(
            backbone=backbone, neck=neck, criterion=criterion,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation, **base_kwargs,
        )
        if transformer.two_stage != as_two_stage:
            raise ValueError(f"DeformableDETR: as_two_stage={as_two_stage} but transformer.two_stage={transformer.two_stage}")
        if len(self.feature_strides) != transformer.num_feature_levels:
            raise ValueError(
                f"DeformableDETR: the neck gives {len(self.feature_strides)} levels, "
                f"transformer.num_feature_levels={transformer.num_feature_levels}"
            )
        if as_two_stage and transformer.two_stage_num_proposals != num_queries:
            raise ValueError(
                f"DeformableDETR: two-stage needs transformer.two_stage_num_proposals "
                f"({transformer.two_stage_num_proposals}) == num_queries ({num_queries})"
            )
        hidden_dim = transformer.d_model
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        if not as_two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        # Focal-loss prior (RetinaNet): every class starts at probability 0.01.
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        # Two-stage adds one head pair for the encoder proposals (index num_decoder_layers).
        num_pred = transformer.decoder.num_layers + (1 if as_two_stage else 0)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        else:
            # One head shared by all decoder layers (the same module repeated), as official.
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if as_two_stage:
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias[2:], 0.0)

    def forward_heads(self, features: List[torch.Tensor], masks: List[torch.Tensor]) -> Dict:
        """Transformer + heads (see :meth:`DETRBase.forward_heads`). The box heads run inside
        the decoder (they refine its references with box refinement), the class heads here;
        each once, and in eval only the last layer's."""
        pos_embeds = [self.position_embedding(m).to(f.dtype) for f, m in zip(features, masks)]
        num_layers = self.transformer.decoder.num_layers
        all_layers = self.training and self.aux_loss
        out = self.transformer(
            features, masks, pos_embeds, None if self.as_two_stage else self.query_embed.weight,
            bbox_embed=self.bbox_embed, refine=self.with_box_refine,
            # The proposal heads are the extra last entries (index num_decoder_layers), as official.
            proposal_heads=(self.class_embed[num_layers], self.bbox_embed[num_layers]) if self.as_two_stage else None,
            all_layers=all_layers, encoder_outputs=self.training,
        )
        first = num_layers - out.hs.shape[0]  # index of the first layer returned
        logits = [self.class_embed[first + i](hs) for i, hs in enumerate(out.hs)]
        outputs = {"pred_logits": logits[-1], "pred_boxes": out.boxes[-1]}
        if all_layers:
            outputs["aux_outputs"] = [{"pred_logits": c, "pred_boxes": b} for c, b in zip(logits[:-1], out.boxes[:-1])]
        if out.enc_outputs_class is not None:
            outputs["enc_outputs"] = {
                "pred_logits": out.enc_outputs_class,
                "pred_boxes": out.enc_outputs_coord_unact.sigmoid(),
            }
        return outputs

    def select_detections(self, outputs: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sigmoid scores, top-k over all (query, class) pairs (a query may give several boxes)."""
        scores, labels, query_idx = select_topk(outputs["pred_logits"].sigmoid(), self.select_box_nums_for_evaluation)
        return scores, labels, gather_queries(outputs["pred_boxes"], query_idx)

    @classmethod
    def transformers_reference(cls, model_cfg, num_classes: int) -> nn.Module:
        """transformers' ``DeformableDetrForObjectDetection`` with this config's architecture."""
        from ..hf_reference import transformers_model

        return transformers_model(model_cfg, num_classes)

    def float32_modules(self) -> List[nn.Module]:
        # The heads (the two-stage proposal heads are entries of the same lists) and, one-stage,
        # the projection that places the reference points.
        keep = [self.class_embed, self.bbox_embed]
        if not self.as_two_stage:
            keep.append(self.transformer.reference_points)
        return keep

    @property
    def min_encoder_tokens(self) -> int:
        # Two-stage selects its num_queries queries among the encoder tokens.
        return self.num_queries if self.as_two_stage else 1
