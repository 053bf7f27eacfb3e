"""Deformable DETR checkpoints: Hugging Face -> official (fundamentalvision/Deformable-DETR)
names -> this project's names.

The official names are the hub: HF converts through them (the table below follows the mapping of
transformers' ``convert_deformable_detr_to_pytorch.py``, read in reverse), and our model keeps
them for the transformer and heads, so official -> ours is only the backbone (torchvision ->
detectron2 ResNet), ``input_proj`` (now inside the neck) and the heads' class rows.
"""
import logging
import re
from typing import Dict, Mapping

import torch

from .class_heads import COCO_NUM_LOGITS_SIGMOID, coco_contiguous_to_id, resolve_class_map, select_class_rows
from .rename import ConversionError, Rule, add_prefix, fuse_qkv, rename_keys, split_by_prefix, strip_prefix
from .resnet import convert_torchvision_resnet, hf_resnet_to_torchvision, is_hf_resnet

__all__ = [
    "hf_to_official_deformable_detr",
    "official_deformable_detr_to_detrex",
    "is_hf_deformable_detr",
    "is_official_deformable_detr",
]

logger = logging.getLogger(__name__)

_WB = r"(weight|bias)"
_MSDA = r"(sampling_offsets|attention_weights|value_proj|output_proj)"
# The HF backbone prefix: "model.backbone.conv_encoder.model." in saved files (also what v5's
# save_pretrained writes), "model.backbone.model." in transformers 5's module tree.
_HF_BACKBONE = r"model\.backbone\.(?:conv_encoder\.)?model\."
_OFFICIAL_BACKBONE = r"backbone\.0\.body\."

_HF_TO_OFFICIAL = [
    Rule(r"model\.level_embed", "transformer.level_embed"),
    Rule(rf"model\.input_proj\.(\d+)\.([01])\.{_WB}", r"input_proj.\1.\2.\3"),
    Rule(r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    Rule(rf"model\.reference_points\.{_WB}", r"transformer.reference_points.\1"),
    Rule(rf"model\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.{_WB}", r"transformer.\1.\2"),
    # encoder layer: self_attn -> norm1 -> ffn -> norm2
    Rule(rf"model\.encoder\.layers\.(\d+)\.self_attn\.{_MSDA}\.{_WB}", r"transformer.encoder.layers.\1.self_attn.\2.\3"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.{_WB}", r"transformer.encoder.layers.\1.norm1.\2"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.{_WB}", r"transformer.encoder.layers.\1.linear\2.\3"),
    Rule(rf"model\.encoder\.layers\.(\d+)\.final_layer_norm\.{_WB}", r"transformer.encoder.layers.\1.norm2.\2"),
    # decoder layer: self_attn -> norm2 -> cross_attn -> norm1 -> ffn -> norm3 (official numbering)
    Rule(
        r"model\.decoder\.layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        r"transformer.decoder.layers.\1.self_attn.\2",
    ),
    Rule(rf"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm2.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.encoder_attn\.{_MSDA}\.{_WB}", r"transformer.decoder.layers.\1.cross_attn.\2.\3"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm1.\2"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.{_WB}", r"transformer.decoder.layers.\1.linear\2.\3"),
    Rule(rf"model\.decoder\.layers\.(\d+)\.final_layer_norm\.{_WB}", r"transformer.decoder.layers.\1.norm3.\2"),
    # heads, and the aliases the decoder holds for box refinement / two-stage
    Rule(rf"model\.decoder\.bbox_embed\.(\d+)\.layers\.(\d+)\.{_WB}", r"transformer.decoder.bbox_embed.\1.layers.\2.\3"),
    Rule(rf"model\.decoder\.class_embed\.(\d+)\.{_WB}", r"transformer.decoder.class_embed.\1.\2"),
    Rule(rf"class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
    Rule(rf"bbox_embed\.(\d+)\.layers\.(\d+)\.{_WB}", r"bbox_embed.\1.layers.\2.\3"),
]


def is_hf_deformable_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "model.level_embed" in state_dict


def is_official_deformable_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "transformer.level_embed" in state_dict and any(
        k.startswith("backbone.0.body.") for k in state_dict
    )


def _layer_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m[1]) for m in map(pattern.match, state_dict) if m}
    return max(indices) + 1 if indices else 0


def _head_params(state_dict, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def complete_official_heads(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fill in the head copies a saved file may omit, giving the full official key set.

    Official checkpoints save ``class_embed.{i}`` / ``bbox_embed.{i}`` for every prediction
    stage (one shared module repeated without box refinement) and, with box refinement, the
    decoder's aliases ``transformer.decoder.bbox_embed.{i}`` (and ``class_embed`` for
    two-stage). Hugging Face's ``save_pretrained`` drops whichever copies it declares tied.
    """
    num_layers = _layer_count(state_dict, "transformer.decoder.layers.")
    two_stage = "transformer.enc_output.weight" in state_dict
    refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in state_dict)
    num_pred = num_layers + int(two_stage)
    for head in ("class_embed", "bbox_embed"):
        aliased = refine if head == "bbox_embed" else two_stage
        for i in range(num_pred):
            own, alias = f"{head}.{i}.", f"transformer.decoder.{head}.{i}."
            params = _head_params(state_dict, own) or _head_params(state_dict, alias)
            if not params:
                params = _head_params(state_dict, f"{head}.0.")
                if not params:
                    raise ConversionError(f"checkpoint has no '{head}' parameters")
                if refine:
                    # e.g. HF declares class_embed.{i>0} tied to class_embed.0 and does not save them
                    logger.warning(f"{own}* is missing; using {head}.0.* for it (as the source library does)")
            state_dict.update(add_prefix(params, own))
            if aliased:
                state_dict.update(add_prefix(params, alias))
    return state_dict


def hf_to_official_deformable_detr(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``DeformableDetrForObjectDetection`` state dict (transformers 4 or 5 names, HF ResNet or
    timm backbone) -> official Deformable-DETR names, the backbone in torchvision names under
    ``backbone.0.body.``."""
    backbone, rest = split_by_prefix(state_dict, _HF_BACKBONE)
    if not backbone:
        raise ConversionError("Hugging Face Deformable DETR: no 'model.backbone.' weights found")
    if is_hf_resnet(backbone):
        backbone = hf_resnet_to_torchvision(backbone)
    backbone = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    rest = fuse_qkv(rest, r"model\.decoder\.layers\.\d+\.self_attn")
    out = add_prefix(backbone, "backbone.0.body.")
    out.update(rename_keys(rest, _HF_TO_OFFICIAL, what="Hugging Face Deformable DETR"))
    return complete_official_heads(out)


_OFFICIAL_TO_DETREX = [
    Rule(rf"input_proj\.(\d+)\.([01])\.{_WB}", r"neck.input_proj.\1.\2.\3"),
    # the decoder's aliases of the heads are the same tensors as the top-level heads
    Rule(r"transformer\.decoder\.(bbox_embed|class_embed)\.(.+)", r"\1.\2"),
    Rule(r"(transformer\..+|class_embed\..+|bbox_embed\..+|query_embed\.weight)", r"\1"),
]


def official_deformable_detr_to_detrex(
    state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto"
) -> Dict[str, torch.Tensor]:
    """Official Deformable-DETR names -> this project's ``DeformableDETR`` names.

    Args:
        state_dict: ``torch.load(checkpoint)["model"]`` of the official repository (or the output
            of :func:`hf_to_official_deformable_detr`).
        class_map: "coco" maps the 91 COCO-id logits to the 80 contiguous classes, "none" keeps the
            head as it is, "auto" does "coco" exactly when the head has 91 rows.
    """
    state_dict = strip_prefix(state_dict, "module.")  # saved from a DistributedDataParallel
    backbone, rest = split_by_prefix(state_dict, _OFFICIAL_BACKBONE)
    if not backbone:
        raise ConversionError("official Deformable DETR: no 'backbone.0.body.' weights found")
    out = add_prefix(convert_torchvision_resnet(backbone), "backbone.")
    out.update(rename_keys(rest, _OFFICIAL_TO_DETREX, what="official Deformable DETR"))

    num_logits = out["class_embed.0.weight"].shape[0]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SIGMOID) == "coco":
        ids = coco_contiguous_to_id()
        num_layers = _layer_count(out, "transformer.decoder.layers.")
        two_stage = "transformer.enc_output.weight" in out
        select_class_rows(out, rf"class_embed\.(?!{num_layers}$)\d+" if two_stage else r"class_embed\.\d+", ids)
        if two_stage:
            # proposal head: keep row 0 (objectness) first, fill the other rows as for the decoder
            select_class_rows(out, rf"class_embed\.{num_layers}", [0] + ids[1:])
        logger.info(f"class heads: {num_logits} COCO-id logits -> {len(ids)} contiguous classes")
    return out
