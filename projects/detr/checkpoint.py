"""What DETR knows about its weights: the arch facts of a checkpoint and the released layouts
(official facebookresearch/detr, Hugging Face) that tools/convert_checkpoint.py converts. The
library reaches it through ``DETR.weight_family`` and the weight-family registry
(docs/architecture.md).

The HF -> official table is transformers' ``convert_detr_original_pytorch_checkpoint_to_pytorch.py``
read in reverse (HF splits ``nn.MultiheadAttention.in_proj_weight`` into q/k/v projections; we
fuse them back). Our DETR keeps the official names, so official -> ours only converts the
backbone (torchvision -> detectron2 ResNet) and the class rows. The released class head has 92
softmax logits: COCO ids 0..90, then "no object", which the COCO mapping keeps last.
"""
import logging
from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import nn

from detrex_lite.checkpoint.class_heads import (
    COCO_NUM_LOGITS_SOFTMAX,
    coco_contiguous_to_id,
    resolve_class_map,
    select_class_rows,
)
from detrex_lite.checkpoint.family import WeightFamily, WeightFormat, register_weight_family, stated_arch_from
from detrex_lite.checkpoint.layer_stacks import MHA_PARAMS as _MHA
from detrex_lite.checkpoint.layer_stacks import WEIGHT_OR_BIAS as _WB
from detrex_lite.checkpoint.layer_stacks import (
    TRANSFORMER_ARCH_OPTIONS,
    hf_transformer_layer_rules,
    layer_count_hints,
    layer_counts,
    transformer_arch,
)
from detrex_lite.checkpoint.rename import Rule, fuse_qkv, rename_keys, strip_prefix
from detrex_lite.checkpoint.resnet import split_hf_backbone, split_official_backbone

__all__ = ["DETRWeights", "hf_to_official_detr", "official_detr_to_detrex", "hf_detr_to_detrex", "is_hf_detr", "is_official_detr"]

logger = logging.getLogger(__name__)


_HF_TO_OFFICIAL = [
    Rule(rf"model\.input_projection\.{_WB}", r"input_proj.\1"),
    Rule(r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    # encoder and decoder layers; decoder: self_attn -> norm1 -> cross-attention (multihead_attn)
    # -> norm2 -> ffn -> norm3
    *hf_transformer_layer_rules(
        encoder_self_attn=_MHA, decoder_self_attn=_MHA, decoder_cross_attn=_MHA,
        cross_attn="multihead_attn", decoder_norms=("norm1", "norm2"),
    ),
    Rule(rf"model\.decoder\.layernorm\.{_WB}", r"transformer.decoder.norm.\1"),
    Rule(rf"class_labels_classifier\.{_WB}", r"class_embed.\1"),
    Rule(rf"bbox_predictor\.layers\.(\d+)\.{_WB}", r"bbox_embed.layers.\1.\2"),
]


def is_hf_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "class_labels_classifier.weight" in state_dict


def is_official_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    # The torchvision backbone tells the release apart from our DETR, which keeps the official
    # transformer and head names.
    return (
        "transformer.decoder.norm.weight" in state_dict
        and "class_embed.weight" in state_dict
        and any(k.startswith("backbone.0.body.") for k in state_dict)
    )


def hf_to_official_detr(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``DetrForObjectDetection`` state dict (transformers 4 or 5 names) -> official DETR names."""
    out, rest = split_hf_backbone(state_dict, what="Hugging Face DETR")
    rest = fuse_qkv(rest, r"model\.(encoder\.layers\.\d+\.self_attn|decoder\.layers\.\d+\.(self_attn|encoder_attn))")
    out.update(rename_keys(rest, _HF_TO_OFFICIAL, what="Hugging Face DETR"))
    return out


_OFFICIAL_TO_DETREX = [
    Rule(r"(transformer\..+|class_embed\..+|bbox_embed\..+|query_embed\.weight|input_proj\..+)", r"\1"),
]


def official_detr_to_detrex(
    state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto"
) -> Dict[str, torch.Tensor]:
    """Official DETR names -> this project's DETR names.

    Args:
        state_dict: ``torch.load(checkpoint)["model"]`` of facebookresearch/detr (or the output of
            :func:`hf_to_official_detr`).
        class_map: "coco" maps the 91 COCO-id logits + no-object to 80 contiguous classes +
            no-object (kept last); "none" keeps the head; "auto" does "coco" exactly when the
            head has 92 rows.
    """
    state_dict = strip_prefix(state_dict, "module.")
    out, rest = split_official_backbone(state_dict, what="official DETR")
    out.update(rename_keys(rest, _OFFICIAL_TO_DETREX, what="official DETR"))

    num_logits = out["class_embed.weight"].shape[0]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SOFTMAX) == "coco":
        ids = coco_contiguous_to_id()
        select_class_rows(out, r"class_embed", ids + [num_logits - 1])  # no-object stays last
        logger.info(f"class head: {num_logits - 1} COCO-id logits + no-object -> {len(ids)} classes + no-object")
    return out


def hf_detr_to_detrex(state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto") -> Dict[str, torch.Tensor]:
    """Hugging Face names -> official names -> this project's names (see the two steps)."""
    return official_detr_to_detrex(hf_to_official_detr(state_dict), class_map=class_map)


# ------------------------------------------------------------------ arch facts
# arch field -> the config option that sets it (LazyConfig paths of the shipped configs)
ARCH_OPTIONS = {**TRANSFORMER_ARCH_OPTIONS, "num_classes": "model.num_classes"}
# fields of the official repository's argparse "args" and of the HF config.json -> arch fields
_OFFICIAL_ARGS = {"enc_layers": "num_encoder_layers", "dec_layers": "num_decoder_layers", "num_queries": "num_queries", "hidden_dim": "d_model"}
_HF_CONFIG = {"encoder_layers": "num_encoder_layers", "decoder_layers": "num_decoder_layers", "num_queries": "num_queries", "d_model": "d_model"}


@register_weight_family
class DETRWeights(WeightFamily):
    """DETR's weights: one class head with K + 1 rows (the last one "no object"), one box head."""

    name = "detr"
    arch_options = ARCH_OPTIONS
    class_head_pattern = r"(?:.*\.)?class_embed\.(?:weight|bias)"
    formats = (
        WeightFormat("official-detr", is_official_detr, official_detr_to_detrex, stated_arch_from(_OFFICIAL_ARGS)),
        WeightFormat("hf", is_hf_detr, hf_detr_to_detrex, stated_arch_from(_HF_CONFIG)),
    )

    def model_arch(self, model: nn.Module) -> Dict[str, Any]:
        return {**super().model_arch(model), **transformer_arch(model)}

    def state_dict_arch(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        if not ("class_embed.weight" in state_dict and "transformer.decoder.norm.weight" in state_dict):
            return {}
        arch: Dict[str, Any] = {
            "meta_architecture": "DETR",
            "d_model": int(state_dict["class_embed.weight"].shape[1]),
            "num_classes": int(state_dict["class_embed.weight"].shape[0]) - 1,  # + no-object
        }
        if "query_embed.weight" in state_dict:
            arch["num_queries"] = int(state_dict["query_embed.weight"].shape[0])
        arch.update(layer_counts(state_dict))
        return arch

    def keys_point_at(self, missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
        return layer_count_hints(list(missing) + list(unexpected), ARCH_OPTIONS)

    def describe(self, state_dict: Mapping[str, torch.Tensor]) -> str:
        return f"DETR, {state_dict['class_embed.weight'].shape[0] - 1} classes + no-object"
