"""DETR checkpoints: Hugging Face -> official (facebookresearch/detr) names -> this project's names.

The HF -> official table is transformers' ``convert_detr_original_pytorch_checkpoint_to_pytorch.py``
read in reverse (HF splits ``nn.MultiheadAttention.in_proj_weight`` into q/k/v projections; we
fuse them back). Our DETR keeps the official names, so official -> ours only converts the
backbone (torchvision -> detectron2 ResNet) and the class rows.
"""
import logging
from typing import Dict, Mapping

import torch

from .class_heads import COCO_NUM_LOGITS_SOFTMAX, coco_contiguous_to_id, resolve_class_map, select_class_rows
from .rename import ConversionError, Rule, add_prefix, fuse_qkv, rename_keys, split_by_prefix, strip_prefix
from .resnet import convert_torchvision_resnet, hf_resnet_to_torchvision, is_hf_resnet

__all__ = ["hf_to_official_detr", "official_detr_to_detrex", "is_hf_detr", "is_official_detr"]

logger = logging.getLogger(__name__)

_WB = r"(weight|bias)"
_MHA = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
_HF_BACKBONE = r"model\.backbone\.(?:conv_encoder\.)?model\."
_OFFICIAL_BACKBONE = r"backbone\.0\.body\."

_HF_TO_OFFICIAL = [
    Rule(rf"model\.input_projection\.{_WB}", r"input_proj.\1"),
    Rule(r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    # encoder layer: self_attn -> norm1 -> ffn -> norm2
    Rule(rf"model\.encoder\.layers\.(\d+)\.self_attn\.{_MHA}", r"transformer.encoder.layers.\1.self_attn.\2"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.{_WB}", r"transformer.encoder.layers.\1.norm1.\2"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.{_WB}", r"transformer.encoder.layers.\1.linear\2.\3"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.final_layer_norm\.{_WB}", r"transformer.encoder.layers.\1.norm2.\2"),
    # decoder layer: self_attn -> norm1 -> cross-attention (multihead_attn) -> norm2 -> ffn -> norm3
    Rule(rf"model\.decoder\.layers\.(\d+)\.self_attn\.{_MHA}", r"transformer.decoder.layers.\1.self_attn.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.encoder_attn\.{_MHA}", r"transformer.decoder.layers.\1.multihead_attn.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.{_WB}", r"transformer.decoder.layers.\1.linear\2.\3"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.final_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    Rule(rf"model\.decoder\.layernorm\.{_WB}", r"transformer.decoder.norm.\1"),
    Rule(rf"class_labels_classifier\.{_WB}", r"class_embed.\1"),
    Rule(rf"bbox_predictor\.layers\.(\d+)\.{_WB}", r"bbox_embed.layers.\1.\2"),
]


def is_hf_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "class_labels_classifier.weight" in state_dict


def is_official_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "transformer.decoder.norm.weight" in state_dict and "class_embed.weight" in state_dict


def hf_to_official_detr(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``DetrForObjectDetection`` state dict (transformers 4 or 5 names) -> official DETR names."""
    backbone, rest = split_by_prefix(state_dict, _HF_BACKBONE)
    if not backbone:
        raise ConversionError("Hugging Face DETR: no 'model.backbone.' weights found")
    if is_hf_resnet(backbone):
        backbone = hf_resnet_to_torchvision(backbone)
    backbone = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    rest = fuse_qkv(rest, r"model\.(encoder\.layers\.\d+\.self_attn|decoder\.layers\.\d+\.(self_attn|encoder_attn))")
    out = add_prefix(backbone, "backbone.0.body.")
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
    backbone, rest = split_by_prefix(state_dict, _OFFICIAL_BACKBONE)
    if not backbone:
        raise ConversionError("official DETR: no 'backbone.0.body.' weights found")
    out = add_prefix(convert_torchvision_resnet(backbone), "backbone.")
    out.update(rename_keys(rest, _OFFICIAL_TO_DETREX, what="official DETR"))

    num_logits = out["class_embed.weight"].shape[0]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SOFTMAX) == "coco":
        ids = coco_contiguous_to_id()
        select_class_rows(out, r"class_embed", ids + [num_logits - 1])  # no-object stays last
        logger.info(f"class head: {num_logits - 1} COCO-id logits + no-object -> {len(ids)} classes + no-object")
    return out
