"""DINO (Zhang et al., ICLR 2023): Deformable DETR with contrastive denoising, mixed query
selection and look forward twice."""
import copy
import math
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from detrex_lite.checkpoint.family import WeightFamily
from detrex_lite.layers import MLP
from detrex_lite.modeling.meta_arch import DETRBase, gather_queries, select_topk

from ..checkpoint import DINOWeights
from .denoising import build_denoising_queries
from .dino_transformer import DINOTransformer

__all__ = ["DINO"]


class DINO(DETRBase):
    """DINO on detectron2 inputs.

    Args:
        backbone, neck, base_kwargs (``pixel_mean``, ``pixel_std``, ``batch_invariant_inference``,
            ``size_divisibility``): see :class:`DETRBase`; the neck gives
            ``transformer.num_feature_levels`` levels.
        position_embedding: mask (N, H, W) -> (N, d_model, H, W) (DINO: sine, temperature 20).
        transformer: :class:`DINOTransformer`; its ``num_queries``, ``mixed_selection`` and
            ``look_forward_twice`` must equal this model's (the configs tie them).
        num_classes: K (sigmoid classification).
        criterion: a :class:`DINOCriterion`.
        num_queries: matching queries (900 in the paper).
        aux_loss: supervise every decoder layer.
        dn_number: contrastive denoising: about this many positive (and as many negative)
            queries per image in training (100 in the paper); 0 switches CDN off.
        label_noise_ratio, box_noise_scale: CDN noise (0.5, lambda1 = 1.0).
        mixed_selection, look_forward_twice: the other two switches (the transformer's).
        share_heads: one class head and one box head for all decoder layers (the official
            DINO); False: one per layer (detrex's DINO).
        select_box_nums_for_evaluation: detections kept per image (top-k over query x class).
    """

    weight_family: ClassVar[WeightFamily] = DINOWeights()

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        position_embedding: nn.Module,
        transformer: DINOTransformer,
        num_classes: int,
        criterion: nn.Module,
        num_queries: int = 900,
        aux_loss: bool = True,
        dn_number: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        mixed_selection: bool = True,
        look_forward_twice: bool = True,
        share_heads: bool = True,
        select_box_nums_for_evaluation: int = 300,
        **base_kwargs: Any,
    ):
        super().__init__(
            backbone=backbone, neck=neck, criterion=criterion,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation, **base_kwargs,
        )
        for name, mine, theirs in (
            ("num_queries", num_queries, transformer.num_queries),
            ("mixed_selection", mixed_selection, transformer.mixed_selection),
            ("look_forward_twice", look_forward_twice, transformer.look_forward_twice),
        ):
            if mine != theirs:
                raise ValueError(f"DINO: {name}={mine} but transformer.{name}={theirs}")
        if len(self.feature_strides) != transformer.num_feature_levels:
            raise ValueError(
                f"DINO: the neck gives {len(self.feature_strides)} levels, "
                f"transformer.num_feature_levels={transformer.num_feature_levels}"
            )
        if transformer.enc_out_class_embed.out_features != num_classes:
            raise ValueError(f"DINO: num_classes={num_classes} but the transformer's encoder head has {transformer.enc_out_class_embed.out_features}")
        hidden_dim = transformer.d_model
        self.position_embedding = position_embedding
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.dn_number = dn_number
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.mixed_selection = mixed_selection
        self.look_forward_twice = look_forward_twice
        # The content of a denoising query is the embedding of its (noised) label.
        self.label_enc = nn.Embedding(num_classes, hidden_dim)

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        # Focal-loss prior (RetinaNet): every class starts at probability 0.01; boxes start at
        # their reference.
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        num_layers = transformer.decoder.num_layers
        if share_heads:  # the same module repeated, as official (keys class_embed.0..5 all exist)
            self.class_embed = nn.ModuleList([class_embed] * num_layers)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_layers)
        else:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_layers))
        self.share_heads = share_heads
        # The encoder heads start as copies of the decoder's (official).
        transformer.enc_out_class_embed.load_state_dict(class_embed.state_dict())
        transformer.enc_out_bbox_embed.load_state_dict(bbox_embed.state_dict())

    def forward(self, batched_inputs: List[Dict]):
        """:meth:`DETRBase.forward`; in training the targets also go to :meth:`forward_heads`
        (they make the denoising queries)."""
        if not self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        features, masks = self.extract_features(images)
        targets = self.prepare_targets(batched_inputs)
        return self.criterion(self.forward_heads(features, masks, targets), targets)

    def forward_heads(
        self, features: List[torch.Tensor], masks: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None
    ) -> Dict:
        """Transformer + heads (see :meth:`DETRBase.forward_heads`).

        Args:
            targets: training targets (normalised cxcywh); with ``dn_number > 0`` in training they
                make the denoising queries, whose outputs go to "dn_outputs" (the matching
                queries' outputs never contain them).
        """
        pos_embeds = [self.position_embedding(m).to(f.dtype) for f, m in zip(features, masks)]
        denoising = None
        if self.training and targets is not None:
            denoising = build_denoising_queries(
                targets, dn_number=self.dn_number, label_noise_ratio=self.label_noise_ratio,
                box_noise_scale=self.box_noise_scale, num_classes=self.num_classes,
                num_queries=self.num_queries, label_enc=self.label_enc,
            )
        all_layers = self.training and self.aux_loss
        out = self.transformer(
            features, masks, pos_embeds, bbox_embed=self.bbox_embed, denoising=denoising,
            all_layers=all_layers, encoder_outputs=self.training,
        )
        first = self.transformer.decoder.num_layers - out.hs.shape[0]
        logits = [self.class_embed[first + i](hs) for i, hs in enumerate(out.hs)]
        boxes = list(out.boxes)
        num_dn = 0 if denoising is None else denoising.num_queries
        stages = [{"pred_logits": c[:, num_dn:], "pred_boxes": b[:, num_dn:]} for c, b in zip(logits, boxes)]
        outputs = dict(stages[-1])
        if all_layers:
            outputs["aux_outputs"] = stages[:-1]
        if out.enc_logits is not None:
            outputs["enc_topk_outputs"] = {"pred_logits": out.enc_logits, "pred_boxes": out.enc_boxes}
        if denoising is not None:
            dn_stages = [{"pred_logits": c[:, :num_dn], "pred_boxes": b[:, :num_dn]} for c, b in zip(logits, boxes)]
            outputs["dn_outputs"] = dict(
                dn_stages[-1], aux_outputs=dn_stages[:-1] if all_layers else [],
                num_groups=denoising.num_groups, max_boxes=denoising.max_boxes,
            )
        return outputs

    def select_detections(self, outputs: Dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sigmoid scores, top-k over all (query, class) pairs (as Deformable DETR)."""
        scores, labels, query_idx = select_topk(outputs["pred_logits"].sigmoid(), self.select_box_nums_for_evaluation)
        return scores, labels, gather_queries(outputs["pred_boxes"], query_idx)

    def float32_modules(self) -> List[nn.Module]:
        # The decoder heads and the encoder's, which rank the tokens and place the anchors.
        return [self.class_embed, self.bbox_embed, self.transformer.enc_out_class_embed, self.transformer.enc_out_bbox_embed]

    @property
    def min_encoder_tokens(self) -> int:
        # The num_queries anchors are selected among the encoder tokens.
        return self.num_queries
