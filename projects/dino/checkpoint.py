"""DINO checkpoints: the official release (IDEA-Research/DINO, ``checkpoint0011_4scale.pth``) and
detrex's DINO (``dino_r50_4scale_12ep.pth``) -> this project's :class:`DINO` names.

Our transformer and heads keep the official names, so official -> ours is the backbone
(torchvision -> detectron2 ResNet), ``input_proj`` (inside the neck here), the decoder's aliases of
the shared heads (dropped: the heads are passed to the decoder at call time) and the class rows
(91 COCO-id logits -> 80 contiguous classes, also for the denoising label embedding, whose extra
92nd row is never used). detrex's names are its generic layer containers (``attentions``,
``ffns``, ``norms``), its ChannelMapper (``convs``, ``extra_convs``) and per-layer heads whose last
entry is the encoder's; its models use per-layer heads (``model.share_heads=False``) and its
position embedding (``temperature=10000``, ``offset=-0.5``), see docs/dino.md.

Pure functions of a state dict; nothing here reads a file.
"""
import logging
import re
from typing import Dict, Mapping

import torch

from detrex_lite.checkpoint.class_heads import (
    COCO_NUM_LOGITS_SIGMOID,
    coco_contiguous_to_id,
    resolve_class_map,
    select_class_rows,
)
from detrex_lite.checkpoint.rename import ConversionError, Rule, add_prefix, rename_keys, split_by_prefix, strip_prefix
from detrex_lite.checkpoint.resnet import convert_torchvision_resnet

__all__ = ["is_official_dino", "is_detrex_dino", "official_dino_to_ours", "detrex_dino_to_ours"]

logger = logging.getLogger(__name__)

_WB = r"(weight|bias)"
_MSDA = r"(sampling_offsets|attention_weights|value_proj|output_proj)"
_MHA = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"
_CLASS_HEADS = r"class_embed\.\d+|transformer\.enc_out_class_embed"

_OFFICIAL_TO_OURS = [
    Rule(rf"input_proj\.(\d+)\.([01])\.{_WB}", r"neck.input_proj.\1.\2.\3"),
    # the decoder's aliases of the heads hold the same tensors as the top-level heads
    Rule(r"transformer\.decoder\.(bbox_embed|class_embed)\.(.+)", r"\1.\2"),
    Rule(r"(transformer\..+|class_embed\..+|bbox_embed\..+|label_enc\.weight)", r"\1"),
]


def is_official_dino(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """The official release: torchvision backbone under ``backbone.0.body.`` and DINO's encoder
    heads under ``transformer.enc_out_*``."""
    keys = strip_prefix(state_dict, "module.")
    return "transformer.enc_out_class_embed.weight" in keys and any(k.startswith("backbone.0.body.") for k in keys)


def is_detrex_dino(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """detrex's DINO: ``transformer.level_embeds`` and the denoising ``label_enc``."""
    return "transformer.level_embeds" in state_dict and "label_enc.weight" in state_dict


def _layer_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m[1]) for m in map(pattern.match, keys) if m}
    return max(indices) + 1 if indices else 0


def _map_classes(out: Dict[str, torch.Tensor], class_map: str, what: str) -> Dict[str, torch.Tensor]:
    """COCO-id rows -> contiguous classes in every class head and the label embedding (rows
    beyond the class heads', the official 92nd, are dropped)."""
    num_logits = out["class_embed.0.weight"].shape[0]
    if out["label_enc.weight"].shape[0] < num_logits:
        raise ConversionError(f"{what}: label_enc has {out['label_enc.weight'].shape[0]} rows, fewer than the {num_logits} classes")
    out["label_enc.weight"] = out["label_enc.weight"][:num_logits]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SIGMOID) == "coco":
        ids = coco_contiguous_to_id()
        select_class_rows(out, _CLASS_HEADS, ids)
        select_class_rows(out, r"label_enc", ids)
        logger.info(f"class heads and label_enc: {num_logits} COCO-id rows -> {len(ids)} contiguous classes")
    return out


def official_dino_to_ours(state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto") -> Dict[str, torch.Tensor]:
    """Official DINO names -> this project's ``DINO`` names (``share_heads=True``, the official
    layout).

    Args:
        state_dict: ``torch.load("checkpoint0011_4scale.pth")["model"]``.
        class_map: "coco" maps the 91 COCO-id logits to the 80 contiguous classes, "none" keeps
            them, "auto" does "coco" exactly when the heads have 91 rows.
    """
    state_dict = strip_prefix(state_dict, "module.")
    backbone, rest = split_by_prefix(state_dict, r"backbone\.0\.body\.")
    if not backbone:
        raise ConversionError("official DINO: no 'backbone.0.body.' weights found")
    out = add_prefix(convert_torchvision_resnet(backbone), "backbone.")
    out.update(rename_keys(rest, _OFFICIAL_TO_OURS, what="official DINO"))
    return _map_classes(out, class_map, "official DINO")


def _detrex_rules(num_decoder_layers: int, num_convs: int):
    def head(match) -> str:
        index = int(match[2])
        if index == num_decoder_layers:  # detrex's last head scores the encoder tokens
            return f"transformer.enc_out_{match[1]}.{match[3]}"
        return f"{match[1]}.{index}.{match[3]}"

    enc = r"transformer\.encoder\.layers\.(\d+)\."
    dec = r"transformer\.decoder\.layers\.(\d+)\."
    return [
        Rule(r"backbone\.(.+)", r"backbone.\1"),
        Rule(rf"neck\.convs\.(\d+)\.conv\.{_WB}", r"neck.input_proj.\1.0.\2"),
        Rule(rf"neck\.convs\.(\d+)\.norm\.{_WB}", r"neck.input_proj.\1.1.\2"),
        Rule(rf"neck\.extra_convs\.(\d+)\.(conv|norm)\.{_WB}",
             lambda m: f"neck.input_proj.{num_convs + int(m[1])}.{0 if m[2] == 'conv' else 1}.{m[3]}"),
        Rule(r"transformer\.level_embeds", "transformer.level_embed"),
        Rule(rf"{enc}attentions\.0\.{_MSDA}\.{_WB}", r"transformer.encoder.layers.\1.self_attn.\2.\3"),
        Rule(rf"{enc}ffns\.0\.layers\.0\.0\.{_WB}", r"transformer.encoder.layers.\1.linear1.\2"),
        Rule(rf"{enc}ffns\.0\.layers\.1\.{_WB}", r"transformer.encoder.layers.\1.linear2.\2"),
        Rule(rf"{enc}norms\.([01])\.{_WB}", lambda m: f"transformer.encoder.layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}"),
        # decoder: self-attention -> norms.0 (our norm2) -> cross-attention -> norms.1 (norm1) -> ffn -> norms.2 (norm3)
        Rule(rf"{dec}attentions\.0\.attn\.{_MHA}", r"transformer.decoder.layers.\1.self_attn.\2"),
        Rule(rf"{dec}attentions\.1\.{_MSDA}\.{_WB}", r"transformer.decoder.layers.\1.cross_attn.\2.\3"),
        Rule(rf"{dec}ffns\.0\.layers\.0\.0\.{_WB}", r"transformer.decoder.layers.\1.linear1.\2"),
        Rule(rf"{dec}ffns\.0\.layers\.1\.{_WB}", r"transformer.decoder.layers.\1.linear2.\2"),
        Rule(rf"{dec}norms\.([012])\.{_WB}",
             lambda m: f"transformer.decoder.layers.{m[1]}.norm{(2, 1, 3)[int(m[2])]}.{m[3]}"),
        Rule(rf"transformer\.decoder\.(ref_point_head\.layers\.\d+|norm)\.{_WB}", r"transformer.decoder.\1.\2"),
        Rule(rf"transformer\.(enc_output|enc_output_norm)\.{_WB}", r"transformer.\1.\2"),
        Rule(r"transformer\.tgt_embed\.weight", "transformer.tgt_embed.weight"),
        Rule(r"(?:transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.+)", head),
        Rule(r"label_enc\.weight", "label_enc.weight"),
    ]


def detrex_dino_to_ours(state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto") -> Dict[str, torch.Tensor]:
    """detrex DINO names -> this project's ``DINO`` names (load into ``share_heads=False``).

    Args:
        state_dict: ``torch.load("dino_r50_4scale_12ep.pth")["model"]`` of detrex.
        class_map: as :func:`official_dino_to_ours` (detrex's COCO models already have 80
            contiguous classes, so "auto" keeps them).
    """
    state_dict = strip_prefix(state_dict, "module.")
    if "transformer.level_embeds" not in state_dict:
        raise ConversionError("detrex DINO: no 'transformer.level_embeds' found")
    num_layers = _layer_count(state_dict, "transformer.decoder.layers.")
    num_convs = _layer_count(state_dict, "neck.convs.")
    out = rename_keys(state_dict, _detrex_rules(num_layers, num_convs), what="detrex DINO")
    return _map_classes(out, class_map, "detrex DINO")
