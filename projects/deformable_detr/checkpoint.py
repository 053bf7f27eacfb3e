"""What Deformable DETR knows about its weights: the arch facts of a checkpoint, what a mismatch
means, and the released layouts (official fundamentalvision/Deformable-DETR, Hugging Face) that
tools/convert_checkpoint.py converts. The library reaches it through
``DeformableDETR.weight_family`` and the weight-family registry (docs/architecture.md).

The official names are the hub: HF converts through them (the table below follows the mapping of
transformers' ``convert_deformable_detr_to_pytorch.py``, read in reverse), and our model keeps
them for the transformer and heads, so official -> ours is only the backbone (torchvision ->
detectron2 ResNet), ``input_proj`` (now inside the neck) and the heads' class rows.

Class heads: the released models have 91 sigmoid logits, row c = COCO id c. Two-stage models also
use row 0 of the encoder proposal head (``class_embed.{num_decoder_layers}``) as the objectness
score (all proposals are trained as class 0), so the COCO mapping keeps that row first.
"""
import logging
import re
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from detrex_lite.checkpoint.class_heads import (
    COCO_NUM_LOGITS_SIGMOID,
    coco_contiguous_to_id,
    resolve_class_map,
    select_class_rows,
)
from detrex_lite.checkpoint.family import WeightFamily, WeightFormat, register_weight_family, stated_arch_from
from detrex_lite.checkpoint.layer_stacks import MHA_PARAMS as _MHA
from detrex_lite.checkpoint.layer_stacks import MSDA_PARAMS as _MSDA
from detrex_lite.checkpoint.layer_stacks import WEIGHT_OR_BIAS as _WB
from detrex_lite.checkpoint.layer_stacks import (
    LAYER_COUNT_PATTERNS,
    TRANSFORMER_ARCH_OPTIONS,
    count_indexed,
    hf_transformer_layer_rules,
    layer_count_hints,
    layer_counts,
    transformer_arch,
)
from detrex_lite.checkpoint.rename import ConversionError, Rule, add_prefix, fuse_qkv, rename_keys, strip_prefix
from detrex_lite.checkpoint.resnet import split_hf_backbone, split_official_backbone

__all__ = [
    "DeformableDETRWeights",
    "hf_to_official_deformable_detr",
    "official_deformable_detr_to_detrex",
    "hf_deformable_detr_to_detrex",
    "is_hf_deformable_detr",
    "is_official_deformable_detr",
    "heads_identical",
    "MultiScaleWeights",
    "MULTI_SCALE_ARCH_OPTIONS",
]

logger = logging.getLogger(__name__)


# this project's names (the official ones, but for the backbone and the neck's input_proj)
_TWO_STAGE_RE = re.compile(r"transformer\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.")
_LEVEL_KEY_RE = re.compile(r"neck\.input_proj\.(\d+)\.")
_HEAD_RE = re.compile(r"(class_embed|bbox_embed)\.(\d+)\.(.+)")
_HEAD_GROUP_RE = re.compile(r"(class_embed|bbox_embed)\.\d+\.")


# Hugging Face -> official names
_HF_TO_OFFICIAL = [
    Rule(r"model\.level_embed", "transformer.level_embed"),
    Rule(rf"model\.input_proj\.(\d+)\.([01])\.{_WB}", r"input_proj.\1.\2.\3"),
    Rule(r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    Rule(rf"model\.reference_points\.{_WB}", r"transformer.reference_points.\1"),
    Rule(rf"model\.(enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.{_WB}", r"transformer.\1.\2"),
    # encoder and decoder layers; the decoder's norms keep the official numbering: self_attn -> norm2
    # -> cross_attn -> norm1 -> ffn -> norm3
    *hf_transformer_layer_rules(
        encoder_self_attn=rf"{_MSDA}\.{_WB}", decoder_self_attn=_MHA, decoder_cross_attn=rf"{_MSDA}\.{_WB}",
        cross_attn="cross_attn", decoder_norms=("norm2", "norm1"),
    ),
    # heads, and the aliases the decoder holds for box refinement / two-stage
    Rule(rf"model\.decoder\.bbox_embed\.(\d+)\.layers\.(\d+)\.{_WB}", r"transformer.decoder.bbox_embed.\1.layers.\2.\3"),
    Rule(rf"model\.decoder\.class_embed\.(\d+)\.{_WB}", r"transformer.decoder.class_embed.\1.\2"),
    Rule(rf"class_embed\.(\d+)\.{_WB}", r"class_embed.\1.\2"),
    Rule(rf"bbox_embed\.(\d+)\.layers\.(\d+)\.{_WB}", r"bbox_embed.\1.layers.\2.\3"),
]


# Detection must claim only this family's layout (other multi-scale families, e.g. DINO, also have
# a level embedding): the query-placing layer exists exactly once, reference_points one-stage and
# pos_trans two-stage, in both the official and the HF model.
def is_hf_deformable_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "model.level_embed" in state_dict and (
        "model.reference_points.weight" in state_dict or "model.pos_trans.weight" in state_dict
    )


def is_official_deformable_detr(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return (
        "transformer.level_embed" in state_dict
        and ("transformer.reference_points.weight" in state_dict or "transformer.pos_trans.weight" in state_dict)
        and any(k.startswith("backbone.0.body.") for k in state_dict)
    )


def _head_params(state_dict, prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def complete_official_heads(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fill in the head copies a saved file may omit, giving the full official key set.

    Official checkpoints save ``class_embed.{i}`` / ``bbox_embed.{i}`` for every prediction
    stage (one shared module repeated without box refinement) and, with box refinement, the
    decoder's aliases ``transformer.decoder.bbox_embed.{i}`` (and ``class_embed`` for
    two-stage). Hugging Face's ``save_pretrained`` drops whichever copies it declares tied.
    """
    num_layers = count_indexed(state_dict, LAYER_COUNT_PATTERNS["num_decoder_layers"])
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
    out, rest = split_hf_backbone(state_dict, what="Hugging Face Deformable DETR")
    rest = fuse_qkv(rest, r"model\.decoder\.layers\.\d+\.self_attn")
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
    out, rest = split_official_backbone(state_dict, what="official Deformable DETR")
    out.update(rename_keys(rest, _OFFICIAL_TO_DETREX, what="official Deformable DETR"))

    num_logits = out["class_embed.0.weight"].shape[0]
    if resolve_class_map(class_map, num_logits, COCO_NUM_LOGITS_SIGMOID) == "coco":
        ids = coco_contiguous_to_id()
        num_layers = count_indexed(out, LAYER_COUNT_PATTERNS["num_decoder_layers"])
        two_stage = "transformer.enc_output.weight" in out
        select_class_rows(out, rf"class_embed\.(?!{num_layers}$)\d+" if two_stage else r"class_embed\.\d+", ids)
        if two_stage:
            # proposal head: keep row 0 (objectness) first, fill the other rows as for the decoder
            select_class_rows(out, rf"class_embed\.{num_layers}", [0] + ids[1:])
        logger.info(f"class heads: {num_logits} COCO-id logits -> {len(ids)} contiguous classes")
    return out


def hf_deformable_detr_to_detrex(
    state_dict: Mapping[str, torch.Tensor], *, class_map: str = "auto"
) -> Dict[str, torch.Tensor]:
    """Hugging Face names -> official names -> this project's names (see the two steps)."""
    return official_deformable_detr_to_detrex(hf_to_official_deformable_detr(state_dict), class_map=class_map)


# ------------------------------------------------------------------ arch facts and mismatches
# arch field -> the config option that sets it (LazyConfig paths of the shipped configs): those of
# every multi-scale family with these names, then each family's switches
MULTI_SCALE_ARCH_OPTIONS = {
    "num_feature_levels": "model.transformer.num_feature_levels",
    **TRANSFORMER_ARCH_OPTIONS,
    "num_classes": "model.num_classes",
}
ARCH_OPTIONS = {
    "with_box_refine": "model.with_box_refine", "as_two_stage": "model.as_two_stage", **MULTI_SCALE_ARCH_OPTIONS
}

# fields of the official repository's argparse "args" and of the HF config.json -> arch fields
_OFFICIAL_ARGS = {
    "with_box_refine": "with_box_refine", "two_stage": "as_two_stage", "num_feature_levels": "num_feature_levels",
    "enc_layers": "num_encoder_layers", "dec_layers": "num_decoder_layers", "num_queries": "num_queries",
    "hidden_dim": "d_model",
}
_HF_CONFIG = {
    "with_box_refine": "with_box_refine", "two_stage": "as_two_stage", "num_feature_levels": "num_feature_levels",
    "encoder_layers": "num_encoder_layers", "decoder_layers": "num_decoder_layers", "num_queries": "num_queries",
    "d_model": "d_model",
}


def heads_identical(state_dict: Mapping[str, torch.Tensor]) -> Optional[bool]:
    """Whether every per-layer class/box head of a state dict is the same tensor value as head 0
    (None when there is only one head)."""
    by_suffix: Dict[Tuple[str, str], List[torch.Tensor]] = {}
    for key, value in state_dict.items():
        m = _HEAD_RE.fullmatch(key)
        if m:
            by_suffix.setdefault((m[1], m[3]), []).append(value)
    if not by_suffix or all(len(v) < 2 for v in by_suffix.values()):
        return None
    return all(
        all(v.shape == values[0].shape and torch.equal(v, values[0]) for v in values[1:])
        for values in by_suffix.values()
    )


class MultiScaleWeights(WeightFamily):
    """What the weight families with Deformable DETR's multi-scale names share (this one's and
    DINO's): ``transformer.level_embed`` (L, d_model), one ``neck.input_proj.{level}`` per feature
    level, the encoder/decoder layer stacks, and class/box heads ``class_embed.{i}`` /
    ``bbox_embed.{i}`` that the config makes one per decoder layer or one shared by all. Not
    registered: a family subclasses it and states its switches with the class attributes below."""

    #: the family's switches that are arch facts (read from the model's attributes of those names)
    switches: ClassVar[Tuple[str, ...]] = ()
    #: switch -> a pattern of the state-dict keys that only one setting of it has
    switch_keys: ClassVar[Mapping[str, "re.Pattern"]] = {}
    #: the switch that chooses per-layer or shared heads, and its value for per-layer heads
    heads_switch: ClassVar[str] = ""
    per_layer_heads: ClassVar[bool] = True
    #: how the two head settings are named (per-layer, shared) in explain_tied ("it was trained
    #: with ...", "the config shares one head (...)") and (shared, per-layer) in warnings ("as in a
    #: model trained with ...", "but the config sets ...")
    tied_phrases: ClassVar[Tuple[str, str]] = ("", "")
    warning_phrases: ClassVar[Tuple[str, str]] = ("", "")

    def model_arch(self, model: nn.Module) -> Dict[str, Any]:
        return {
            **super().model_arch(model),
            **transformer_arch(model),
            "num_feature_levels": model.transformer.num_feature_levels,
            **{switch: getattr(model, switch) for switch in self.switches},
        }

    def multi_scale_arch(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """The facts that any state dict of these names gives (for ``state_dict_arch``): levels
        and width (``level_embed``), classes (``class_embed.0``), the layer counts, and the heads
        switch when the heads differ or are equal (see :func:`heads_identical`)."""
        level_embed = state_dict["transformer.level_embed"]
        arch: Dict[str, Any] = {"num_feature_levels": int(level_embed.shape[0]), "d_model": int(level_embed.shape[1])}
        identical = heads_identical(state_dict)
        if identical is not None:
            arch[self.heads_switch] = identical != self.per_layer_heads
        if "class_embed.0.weight" in state_dict:
            arch["num_classes"] = int(state_dict["class_embed.0.weight"].shape[0])
        arch.update(layer_counts(state_dict))
        return arch

    def keys_point_at(self, missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
        keys = list(missing) + list(unexpected)
        hints = [self.arch_options[s] for s, pattern in self.switch_keys.items() if any(pattern.match(k) for k in keys)]
        hints += layer_count_hints(keys, self.arch_options)
        if any(_LEVEL_KEY_RE.match(k) for k in keys):
            hints.append(self.arch_options["num_feature_levels"])
        return hints

    def explain_tied(self, keys: Sequence[str], stored: Mapping[str, Any]) -> Optional[str]:
        if not any(_HEAD_GROUP_RE.match(k) for k in keys):
            return None
        if self.heads_switch in stored:
            return ""  # already explained by the stored architecture
        per_layer, shared = self.tied_phrases
        return (
            "the checkpoint has a separate class/box head per decoder layer (it was trained with "
            f"{per_layer}), the config shares one head ({shared})"
        )

    def warnings(
        self, model_facts: Mapping[str, Any], tensor_facts: Mapping[str, Any], stored: Mapping[str, Any]
    ) -> List[str]:
        """A per-layer-head model given a checkpoint whose per-layer heads are all equal: probably a
        shared-head model's (a per-layer-head model saved right after initialisation looks the
        same, hence a warning; with stored metadata the architecture comparison decides)."""
        switch, per_layer = self.heads_switch, self.per_layer_heads
        if switch in stored or model_facts.get(switch, not per_layer) != per_layer:
            return []
        if tensor_facts.get(switch) is (not per_layer):
            shared, per_layer_setting = self.warning_phrases
            return [
                "every decoder layer's class/box head is identical in the checkpoint, as in a model "
                f"trained with {shared}, but the config sets {per_layer_setting}"
            ]
        return []


@register_weight_family
class DeformableDETRWeights(MultiScaleWeights):
    """Deformable DETR's weights (see the module docstring).

    The plain model repeats ONE class/box head across its decoder layers
    (``nn.ModuleList([head] * n)``), so its state dict has exactly the keys and shapes of the
    box-refinement model, whose heads are independent: the stored arch facts or the tied heads'
    values tell them apart.
    """

    name = "deformable_detr"
    arch_options = ARCH_OPTIONS
    # identical per-layer heads: a plain model's, or a box-refinement model saved untrained
    inferred_only = ("with_box_refine",)
    class_head_pattern = r"(?:.*\.)?class_embed\.\d+\.(?:weight|bias)"
    formats = (
        WeightFormat("official-deformable-detr", is_official_deformable_detr, official_deformable_detr_to_detrex,
                     stated_arch_from(_OFFICIAL_ARGS)),
        WeightFormat("hf", is_hf_deformable_detr, hf_deformable_detr_to_detrex, stated_arch_from(_HF_CONFIG)),
    )
    switches = ("with_box_refine", "as_two_stage")
    switch_keys = {"as_two_stage": _TWO_STAGE_RE}
    # a box-refinement model has one head per decoder layer
    heads_switch, per_layer_heads = "with_box_refine", True
    tied_phrases = ("model.with_box_refine=True", "model.with_box_refine=False")
    warning_phrases = ("model.with_box_refine=False", "model.with_box_refine=True")

    def state_dict_arch(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        """Box refinement is inferred from the heads (independent per-layer heads that differ); a
        model saved right after initialisation cannot be told apart this way, which is why
        training and the converter also store ``meta["arch"]``."""
        if "transformer.level_embed" not in state_dict or not (
            "transformer.reference_points.weight" in state_dict or "transformer.pos_trans.weight" in state_dict
        ):
            return {}  # not Deformable DETR's (another multi-scale family also has a level embedding)
        arch: Dict[str, Any] = {
            "meta_architecture": "DeformableDETR",
            **self.multi_scale_arch(state_dict),
            "as_two_stage": any(_TWO_STAGE_RE.match(k) for k in state_dict),
        }
        if "query_embed.weight" in state_dict:
            arch["num_queries"] = int(state_dict["query_embed.weight"].shape[0])
        return arch

    def describe(self, state_dict: Mapping[str, torch.Tensor]) -> str:
        levels = state_dict["transformer.level_embed"].shape[0]
        two_stage = "transformer.enc_output.weight" in state_dict
        refine = "bbox_embed.1.layers.0.weight" in state_dict and not all(
            (state_dict[f"bbox_embed.1.{k}"] == state_dict[f"bbox_embed.0.{k}"]).all()
            for k in ("layers.0.weight", "layers.2.bias")
        )
        num_classes = state_dict["class_embed.0.weight"].shape[0]
        parts = ["Deformable DETR", "multi-scale" if levels > 1 else "single-scale"]
        parts += ["box refinement"] * refine + ["two-stage"] * two_stage
        return (
            f"{', '.join(parts)}, {num_classes} classes (model.transformer.num_feature_levels={levels}, "
            f"model.with_box_refine={refine}, model.as_two_stage={two_stage})"
        )
