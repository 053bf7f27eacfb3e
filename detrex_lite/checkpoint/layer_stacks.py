"""What the checkpoints of DETR-like detectors share about their transformer's layer stacks.

* Counting layers. The official repositories (and this project's models) name them
  ``transformer.encoder.layers.{i}.*`` and ``transformer.decoder.layers.{i}.*``:
  :data:`LAYER_COUNT_PATTERNS` maps the arch fields ``num_encoder_layers`` /
  ``num_decoder_layers`` to those patterns, :func:`count_indexed` gives 1 + the highest index and
  :func:`layer_counts` both stacks' counts; :func:`layer_count_hints` names the config options
  that missing or unexpected layer keys point at, and :func:`transformer_arch` gives a model's
  own sizes (the arch facts a checkpoint of it must share; :data:`TRANSFORMER_ARCH_OPTIONS`: the
  config options that set them).
* Hugging Face names. The transformers ports name the parts of every encoder and decoder layer
  alike (``self_attn_layer_norm``, ``encoder_attn``, ``fc1``, ``final_layer_norm``, ...):
  :func:`hf_transformer_layer_rules` writes the rename rules to the official names; a family
  says what differs (the attention modules' parameters, the cross-attention's name, the decoder's
  norm numbering).
"""
import re
from typing import Dict, Iterable, List, Mapping, Tuple

from torch import nn

from .rename import Rule

__all__ = [
    "LAYER_COUNT_PATTERNS", "TRANSFORMER_ARCH_OPTIONS", "WEIGHT_OR_BIAS", "MHA_PARAMS", "MSDA_PARAMS", "count_indexed",
    "layer_counts", "layer_count_hints", "transformer_arch", "hf_transformer_layer_rules",
]

# regular-expression groups of parameter names (group: the name) for the families' rename rules
WEIGHT_OR_BIAS = r"(weight|bias)"
MHA_PARAMS = r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"  # nn.MultiheadAttention
MSDA_PARAMS = r"(sampling_offsets|attention_weights|value_proj|output_proj)"  # MultiScaleDeformableAttention

# arch field -> the official key pattern of one layer of that stack (group 1: the layer index)
LAYER_COUNT_PATTERNS: Dict[str, "re.Pattern"] = {
    "num_encoder_layers": re.compile(r"transformer\.encoder\.layers\.(\d+)\."),
    "num_decoder_layers": re.compile(r"transformer\.decoder\.layers\.(\d+)\."),
}


def count_indexed(keys: Iterable[str], pattern: "re.Pattern") -> int:
    """1 + the highest index ``pattern`` captures (group 1) at the start of ``keys`` (0 when none matches)."""
    found = {int(m[1]) for m in map(pattern.match, keys) if m}
    return max(found) + 1 if found else 0


def layer_counts(keys: Iterable[str]) -> Dict[str, int]:
    """{"num_encoder_layers": n, "num_decoder_layers": m} from official-layout ``keys``; a stack
    with no key is left out (a checkpoint says nothing about it)."""
    keys = list(keys)
    counts = {field: count_indexed(keys, pattern) for field, pattern in LAYER_COUNT_PATTERNS.items()}
    return {field: count for field, count in counts.items() if count}


def layer_count_hints(keys: Iterable[str], arch_options: Mapping[str, str]) -> List[str]:
    """The config options (``arch_options[field]``, e.g. ``"model.transformer.num_decoder_layers"``)
    of the layer stacks that ``keys`` (missing or unexpected state-dict keys) fall in, encoder first."""
    keys = list(keys)
    return [
        arch_options[field] for field, pattern in LAYER_COUNT_PATTERNS.items() if any(pattern.match(k) for k in keys)
    ]


# the facts of transformer_arch -> the config options that set them in a DETR-like LazyConfig (a
# family's ``arch_options`` starts from these)
TRANSFORMER_ARCH_OPTIONS: Dict[str, str] = {
    "num_encoder_layers": "model.transformer.num_encoder_layers",
    "num_decoder_layers": "model.transformer.num_decoder_layers",
    "num_queries": "model.num_queries",
    "d_model": "model.transformer.d_model",
}


def transformer_arch(model: nn.Module) -> Dict[str, int]:
    """The sizes of a DETR-like ``model`` (one whose ``transformer`` has ``encoder.layers``,
    ``decoder.layers`` and ``d_model``, and which has ``num_queries``): ``num_encoder_layers``,
    ``num_decoder_layers``, ``num_queries`` and ``d_model``, the arch facts of those names."""
    transformer = model.transformer
    return {
        "num_encoder_layers": len(transformer.encoder.layers),
        "num_decoder_layers": len(transformer.decoder.layers),
        "num_queries": model.num_queries,
        "d_model": transformer.d_model,
    }


def hf_transformer_layer_rules(
    *,
    encoder_self_attn: str,
    decoder_self_attn: str,
    decoder_cross_attn: str,
    cross_attn: str,
    decoder_norms: Tuple[str, str],
) -> List[Rule]:
    """Rename rules from the Hugging Face port's encoder and decoder layers to the official ones.

    HF encoder layer ``model.encoder.layers.{i}``: ``self_attn``, ``self_attn_layer_norm``,
    ``fc1``, ``fc2``, ``final_layer_norm`` -> official ``transformer.encoder.layers.{i}``:
    ``self_attn``, ``norm1``, ``linear1``, ``linear2``, ``norm2``.

    HF decoder layer ``model.decoder.layers.{i}``: ``self_attn``, ``self_attn_layer_norm``,
    ``encoder_attn``, ``encoder_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm`` ->
    official ``transformer.decoder.layers.{i}``: ``self_attn``, ``decoder_norms[0]``,
    ``cross_attn``, ``decoder_norms[1]``, ``linear1``, ``linear2``, ``norm3``.
    transformers 5 names the feed-forward layers ``mlp.fc1`` / ``mlp.fc2``; both are accepted.

    Args:
        encoder_self_attn, decoder_self_attn, decoder_cross_attn: regular expressions for the
            parameter names inside each attention module (kept as they are), e.g.
            ``r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)"``.
        cross_attn: the official name of the decoder's cross-attention module.
        decoder_norms: the official names of the norms after the decoder's self-attention and
            after its cross-attention.
    """
    rules = []
    for stack, parts in (
        ("encoder", [
            ("self_attn", encoder_self_attn, "self_attn"),
            ("self_attn_layer_norm", WEIGHT_OR_BIAS, "norm1"),
            (r"(?:mlp\.)?fc1", WEIGHT_OR_BIAS, "linear1"),
            (r"(?:mlp\.)?fc2", WEIGHT_OR_BIAS, "linear2"),
            ("final_layer_norm", WEIGHT_OR_BIAS, "norm2"),
        ]),
        ("decoder", [
            ("self_attn", decoder_self_attn, "self_attn"),
            ("self_attn_layer_norm", WEIGHT_OR_BIAS, decoder_norms[0]),
            ("encoder_attn", decoder_cross_attn, cross_attn),
            ("encoder_attn_layer_norm", WEIGHT_OR_BIAS, decoder_norms[1]),
            (r"(?:mlp\.)?fc1", WEIGHT_OR_BIAS, "linear1"),
            (r"(?:mlp\.)?fc2", WEIGHT_OR_BIAS, "linear2"),
            ("final_layer_norm", WEIGHT_OR_BIAS, "norm3"),
        ]),
    ):
        for hf, params, official in parts:
            rules.append(Rule(
                rf"model\.{stack}\.layers\.(?P<layer>\d+)\.{hf}\.(?P<param>{params})",
                rf"transformer.{stack}.layers.\g<layer>.{official}.\g<param>",
            ))
    return rules
