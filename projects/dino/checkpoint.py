"""What DINO knows about its weights: the arch facts of a checkpoint, what a mismatch means, and
the released layouts that tools/convert_checkpoint.py converts. The library reaches it through
``DINO.weight_family`` and the weight-family registry (docs/architecture.md, "Adding a model").

Two released layouts:

* ``official-dino``: IDEA-Research/DINO (``checkpoint0011_4scale.pth``, the model under "model",
  the argparse ``args`` beside it). Our model keeps the official names for the transformer and
  heads, so official -> ours is the backbone (torchvision ``backbone.0.body.*`` -> detectron2
  ResNet), ``input_proj`` (inside the neck here), the decoder's aliases of the heads
  (``transformer.decoder.{class,bbox}_embed.*``: the same tensors as the top-level heads) and the
  class rows. The release shares its heads across the decoder layers (``model.share_heads=True``).
* ``detrex-dino``: IDEA-Research/detrex ``projects/dino`` (a detectron2 checkpoint). Its ResNet
  already has detectron2 names; its layers follow detrex's generic ``BaseTransformerLayer``
  (``attentions.{k}``, ``ffns.0.layers``, ``norms.{k}`` in the order of ``operation_order``), its
  neck is a ``ChannelMapper`` (``convs`` + ``extra_convs``), and it keeps one class/box head per
  decoder layer (``model.share_heads=False``) plus one more, index ``num_decoder_layers``, which
  is the encoder's proposal head (``transformer.enc_out_{class,bbox}_embed`` here).

Class heads. The official release has 91 sigmoid logits (``num_classes=91``: row c = COCO id c)
and its denoising label embedding ``label_enc`` has ``dn_labelbook_size + 1`` = 92 rows, of which
only rows 0..90 are ever looked up (noised labels are drawn below ``num_classes``). Unlike
Deformable DETR's two-stage proposal head, DINO's encoder head is trained on the real labels, so
the COCO mapping keeps the same rows (the contiguous classes' COCO ids) in every class head, the
encoder's and ``label_enc`` included; ``class_map="none"`` keeps the first ``num_classes`` rows of
``label_enc``. detrex's COCO models already have 80 contiguous classes.

Switches that leave no trace in the parameters (``model.dn_number``,
``model.look_forward_twice``: training-only) are not arch facts: weights trained with either
value evaluate identically.
"""
import logging
import re
from typing import Any, Dict, List, Mapping

import torch

from detrex_lite.checkpoint.class_heads import (
    COCO_NUM_LOGITS_SIGMOID,
    coco_contiguous_to_id,
    resolve_class_map,
    select_class_rows,
)
from detrex_lite.checkpoint.family import WeightFormat, register_weight_family
from detrex_lite.checkpoint.rename import ConversionError, Rule, rename_keys, strip_prefix
from detrex_lite.checkpoint.resnet import split_official_backbone
# the same encoder/decoder layer names, input projections and per-layer heads as Deformable DETR's:
# its multi-scale base counts layers, tells shared heads from per-layer ones and explains a mismatch
from detrex_lite.checkpoint.layer_stacks import LAYER_COUNT_PATTERNS, count_indexed
from detrex_lite.checkpoint.layer_stacks import MHA_PARAMS as _MHA
from detrex_lite.checkpoint.layer_stacks import MSDA_PARAMS as _MSDA
from detrex_lite.checkpoint.layer_stacks import WEIGHT_OR_BIAS as _WB
from projects.deformable_detr.checkpoint import MULTI_SCALE_ARCH_OPTIONS, MultiScaleWeights

__all__ = [
    "DINOWeights",
    "official_dino_to_detrex",
    "detrex_dino_to_detrex",
    "is_official_dino",
    "is_detrex_dino",
]

logger = logging.getLogger(__name__)


# this project's names
_TGT_EMBED = "transformer.tgt_embed.weight"
# present in every DINO state dict of ours (and not in Deformable DETR's or DETR's)
_OUR_SIGNATURE = ("transformer.level_embed", "transformer.decoder.ref_point_head.layers.0.weight", "label_enc.weight")


# ------------------------------------------------------------------ detection
# Each must claim only its own layout: the official Deformable DETR also has level_embed and
# backbone.0.body (but reference_points / pos_trans, and no ref_point_head or label_enc); detrex's
# Deformable DETR has level_embeds but no label_enc; our own names have level_embed (singular) and
# no backbone.0.body.
def is_official_dino(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return (
        "transformer.level_embed" in state_dict
        and "transformer.decoder.ref_point_head.layers.0.weight" in state_dict
        and "label_enc.weight" in state_dict
        and any(k.startswith("backbone.0.body.") for k in state_dict)
    )


def is_detrex_dino(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return (
        "transformer.level_embeds" in state_dict
        and "transformer.decoder.ref_point_head.layers.0.weight" in state_dict
        and "label_enc.weight" in state_dict
    )


# ------------------------------------------------------------------ class rows
def _map_class_rows(out: Dict[str, torch.Tensor], class_map: str) -> None:
    """Trim ``label_enc`` to the class count and, for COCO-id heads, keep the contiguous classes'
    rows in every class head (in place)."""
    for key in ("class_embed.0.weight", "label_enc.weight"):
        if key not in out:
            raise ConversionError(f"DINO checkpoint has no '{key}'")
    num_logits = out["class_embed.0.weight"].shape[0]
    label_rows = out["label_enc.weight"].shape[0]
    if label_rows < num_logits:
        raise ConversionError(f"label_enc.weight: has {label_rows} rows, the class heads {num_logits}")
    if label_rows > num_logits:  # official: dn_labelbook_size + 1 rows, the last never looked up
        out["label_enc.weight"] = out["label_enc.weight"][:num_logits]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SIGMOID) == "coco":
        ids = coco_contiguous_to_id()
        select_class_rows(out, r"class_embed\.\d+|transformer\.enc_out_class_embed|label_enc", ids)
        logger.info(f"class heads and label_enc: {num_logits} COCO-id rows -> {len(ids)} contiguous classes")


# ------------------------------------------------------------------ official -> ours
_OFFICIAL_TO_DETREX = [
    Rule(rf"input_proj\.(\d+)\.([01])\.{_WB}", r"neck.input_proj.\1.\2.\3"),
    # the decoder's aliases of the heads are the same tensors as the top-level heads
    Rule(r"transformer\.decoder\.(bbox_embed|class_embed)\.(.+)", r"\1.\2"),
    Rule(r"transformer\.level_embed", "transformer.level_embed"),
    Rule(
        r"(transformer\.(?:encoder\.layers|decoder\.layers|decoder\.ref_point_head|decoder\.norm|enc_output"
        r"|enc_output_norm|enc_out_class_embed|enc_out_bbox_embed|tgt_embed)\..+)",
        r"\1",
    ),
    Rule(rf"(class_embed\.\d+\.{_WB}|bbox_embed\.\d+\.layers\.\d+\.{_WB}|label_enc\.weight)", r"\1"),
]


def official_dino_to_detrex(state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto") -> Dict[str, torch.Tensor]:
    """Official IDEA-Research/DINO names -> this project's ``DINO`` names.

    Args:
        state_dict: ``torch.load(checkpoint)["model"]`` of the official repository.
        class_map: "coco" maps the 91 COCO-id logits (every class head and ``label_enc``) to the
            80 contiguous classes, "none" keeps them, "auto" does "coco" exactly when the heads
            have 91 rows.
    """
    state_dict = strip_prefix(state_dict, "module.")  # saved from a DistributedDataParallel
    out, rest = split_official_backbone(state_dict, what="official DINO")
    out.update(rename_keys(rest, _OFFICIAL_TO_DETREX, what="official DINO"))
    _map_class_rows(out, class_map)
    return out


# ------------------------------------------------------------------ detrex -> ours
def _detrex_rules(num_decoder_layers: int, num_convs: int) -> List[Rule]:
    """The detrex -> ours table. Head ``num_decoder_layers`` is the encoder's proposal head; the
    neck's ``extra_convs.{i}`` are levels ``num_convs + i``."""
    enc_head = str(num_decoder_layers)

    def head(m: "re.Match") -> str:
        if m["i"] != enc_head:
            return f"{m['head']}.{m['i']}.{m['rest']}"
        return f"transformer.enc_out_{m['head']}.{m['rest']}"

    layer = r"transformer\.(?P<part>encoder|decoder)\.layers\.(?P<i>\d+)\."
    return [
        Rule(r"backbone\.(.+)", r"backbone.\1"),  # a detectron2 ResNet, as ours
        Rule(rf"neck\.convs\.(\d+)\.conv\.{_WB}", r"neck.input_proj.\1.0.\2"),
        Rule(rf"neck\.convs\.(\d+)\.norm\.{_WB}", r"neck.input_proj.\1.1.\2"),
        Rule(
            rf"neck\.extra_convs\.(?P<l>\d+)\.(?P<m>conv|norm)\.{_WB}",
            lambda m: f"neck.input_proj.{num_convs + int(m['l'])}.{0 if m['m'] == 'conv' else 1}.{m[3]}",
        ),
        Rule(r"transformer\.level_embeds", "transformer.level_embed"),
        # encoder layer: operation_order (self_attn, norm, ffn, norm)
        Rule(rf"transformer\.encoder\.layers\.(\d+)\.attentions\.0\.{_MSDA}\.{_WB}", r"transformer.encoder.layers.\1.self_attn.\2.\3"),
        Rule(rf"transformer\.encoder\.layers\.(\d+)\.norms\.([01])\.{_WB}",
             lambda m: f"transformer.encoder.layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}"),
        # decoder layer: (self_attn, norm, cross_attn, norm, ffn, norm) = official norm2, norm1, norm3
        Rule(rf"transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\.{_MHA}", r"transformer.decoder.layers.\1.self_attn.\2"),
        Rule(rf"transformer\.decoder\.layers\.(\d+)\.attentions\.1\.{_MSDA}\.{_WB}", r"transformer.decoder.layers.\1.cross_attn.\2.\3"),
        Rule(rf"transformer\.decoder\.layers\.(\d+)\.norms\.([012])\.{_WB}",
             lambda m: f"transformer.decoder.layers.{m[1]}.norm{(2, 1, 3)[int(m[2])]}.{m[3]}"),
        # both: FFN = Sequential(Sequential(Linear, act, Dropout), Linear, Dropout)
        Rule(rf"{layer}ffns\.0\.layers\.0\.0\.{_WB}", lambda m: f"transformer.{m['part']}.layers.{m['i']}.linear1.{m[3]}"),
        Rule(rf"{layer}ffns\.0\.layers\.1\.{_WB}", lambda m: f"transformer.{m['part']}.layers.{m['i']}.linear2.{m[3]}"),
        Rule(rf"(transformer\.decoder\.(?:ref_point_head\.layers\.\d+|norm)\.{_WB})", r"\1"),
        Rule(rf"(transformer\.(?:enc_output|enc_output_norm)\.{_WB}|transformer\.tgt_embed\.weight|label_enc\.weight)", r"\1"),
        # heads (the decoder's aliases are the same tensors)
        Rule(r"(?:transformer\.decoder\.)?(?P<head>class_embed|bbox_embed)\.(?P<i>\d+)\.(?P<rest>.+)", head),
    ]


def detrex_dino_to_detrex(state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto") -> Dict[str, torch.Tensor]:
    """detrex ``projects/dino`` names -> this project's ``DINO`` names.

    detrex's R50 configs embed positions with temperature 10000 and offset -0.5 (the official
    DINO and this project's configs: 20 and 0): evaluate converted detrex weights with
    ``model.position_embedding.temperature=10000 model.position_embedding.offset=-0.5``.

    Args:
        state_dict: ``torch.load(checkpoint)["model"]`` of a detrex DINO (ResNet backbone).
        class_map: as :func:`official_dino_to_detrex` (detrex's COCO heads have 80 rows already).
    """
    state_dict = strip_prefix(state_dict, "module.")
    num_decoder_layers = count_indexed(state_dict, LAYER_COUNT_PATTERNS["num_decoder_layers"])
    num_convs = count_indexed(state_dict, re.compile(r"neck\.convs\.(\d+)\."))
    if f"class_embed.{num_decoder_layers}.weight" not in state_dict:
        raise ConversionError(
            f"detrex DINO: no encoder proposal head 'class_embed.{num_decoder_layers}' "
            f"({num_decoder_layers} decoder layers): not a two-stage detrex DINO"
        )
    out = rename_keys(state_dict, _detrex_rules(num_decoder_layers, num_convs), what="detrex DINO")
    _map_class_rows(out, class_map)
    logger.info(
        "detrex's DINO configs use a position embedding with temperature 10000 and offset -0.5: evaluate "
        "with model.position_embedding.temperature=10000 model.position_embedding.offset=-0.5"
    )
    return out


# ------------------------------------------------------------------ arch facts and mismatches
# arch field -> the config option that sets it (LazyConfig paths of the shipped configs)
ARCH_OPTIONS = {
    **MULTI_SCALE_ARCH_OPTIONS, "mixed_selection": "model.mixed_selection", "share_heads": "model.share_heads"
}

# fields of the official repository's argparse "args" -> arch fields
_OFFICIAL_ARGS = {
    "num_feature_levels": "num_feature_levels", "enc_layers": "num_encoder_layers", "dec_layers": "num_decoder_layers",
    "num_queries": "num_queries", "hidden_dim": "d_model",
}


def official_stated_arch(args: Mapping[str, Any]) -> Dict[str, Any]:
    """The arch facts the official ``args`` state (``WeightFormat.stated_arch``): sizes, learned
    content queries (``embed_init_tgt`` with two-stage selection: mixed query selection) and
    heads shared across decoder layers (``dec_pred_{class,bbox}_embed_share``)."""
    arch = {ours: args[key] for key, ours in _OFFICIAL_ARGS.items() if args.get(key) is not None}
    if args.get("embed_init_tgt") is not None and args.get("two_stage_type", "standard") == "standard":
        arch["mixed_selection"] = bool(args["embed_init_tgt"])
    shares = {args.get("dec_pred_class_embed_share"), args.get("dec_pred_bbox_embed_share")}
    if len(shares) == 1 and None not in shares:
        arch["share_heads"] = bool(shares.pop())
    return arch


@register_weight_family
class DINOWeights(MultiScaleWeights):
    """DINO's weights (see the module docstring).

    ``model.share_heads=True`` repeats ONE class/box head across the decoder layers (the official
    release), ``False`` keeps one per layer (detrex): the keys and shapes are the same, the stored
    arch facts or the heads' values tell them apart.
    """

    name = "dino"
    arch_options = ARCH_OPTIONS
    # identical per-layer heads: a shared-head model's, or a per-layer-head model saved untrained
    inferred_only = ("share_heads",)
    class_head_pattern = r"(?:class_embed\.\d+|transformer\.enc_out_class_embed)\.(?:weight|bias)|label_enc\.weight"
    formats = (
        WeightFormat("official-dino", is_official_dino, official_dino_to_detrex, official_stated_arch),
        WeightFormat("detrex-dino", is_detrex_dino, detrex_dino_to_detrex),
    )
    switches = ("mixed_selection", "share_heads")
    # learned content queries: mixed query selection
    switch_keys = {"mixed_selection": re.compile(re.escape(_TGT_EMBED) + "$")}
    # share_heads=False: one head per decoder layer
    heads_switch, per_layer_heads = "share_heads", False
    tied_phrases = ("model.share_heads=False, as detrex's DINO", "model.share_heads=True")
    warning_phrases = ("model.share_heads=True (the official DINO)", "model.share_heads=False")

    def state_dict_arch(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """Shared heads are inferred from the heads' values (a per-layer-head model saved right
        after initialisation looks shared; hence ``meta["arch"]``). Without learned content
        queries the query count leaves no trace."""
        if not all(k in state_dict for k in _OUR_SIGNATURE):
            return {}
        arch: Dict[str, Any] = {
            "meta_architecture": "DINO",
            **self.multi_scale_arch(state_dict),
            "mixed_selection": _TGT_EMBED in state_dict,
        }
        if _TGT_EMBED in state_dict:
            arch["num_queries"] = int(state_dict[_TGT_EMBED].shape[0])
        return arch

    def describe(self, state_dict: Mapping[str, torch.Tensor]) -> str:
        arch = self.state_dict_arch(state_dict)
        queries = arch.get("num_queries", "?")
        return (
            f"DINO, {arch['num_feature_levels']} scales, {arch['num_classes']} classes "
            f"(model.transformer.num_feature_levels={arch['num_feature_levels']}, "
            f"model.transformer.num_encoder_layers={arch['num_encoder_layers']}, "
            f"model.transformer.num_decoder_layers={arch['num_decoder_layers']}, model.num_queries={queries}, "
            f"model.mixed_selection={arch['mixed_selection']}, model.share_heads={arch.get('share_heads', True)})"
        )
