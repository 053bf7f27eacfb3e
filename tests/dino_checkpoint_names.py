"""Parameter names and shapes of the released DINO-4scale checkpoints (no weights), written down
from the model definitions, for the converter tests (no network here).

* Official (IDEA-Research/DINO, ``checkpoint0011_4scale.pth``, ``config/DINO/DINO_4scale.py``):
  torchvision ResNet-50 with FrozenBatchNorm2d under ``backbone.0.body.`` (no ``fc``, no
  ``num_batches_tracked``), ``input_proj.{0-2}`` = Conv2d(C_l, 256, 1) + GroupNorm(32, 256),
  ``input_proj.3`` = Conv2d(2048, 256, 3, stride 2) + GroupNorm; ``transformer.level_embed``
  (4, 256), ``transformer.tgt_embed`` (900, 256), ``transformer.enc_output`` Linear(256, 256) +
  ``enc_output_norm``, ``transformer.enc_out_class_embed`` Linear(256, 91),
  ``transformer.enc_out_bbox_embed`` MLP(256, 256, 4, 3); 6 encoder layers (MSDeformAttn(256,
  4 levels, 8 heads, 4 points) ``self_attn``, ``norm1``, ``linear1`` (2048), ``linear2``,
  ``norm2``); 6 decoder layers (``cross_attn`` MSDeformAttn, ``norm1``, ``self_attn``
  nn.MultiheadAttention(256, 8), ``norm2``, ``linear1``, ``linear2``, ``norm3``);
  ``transformer.decoder.norm``, ``transformer.decoder.ref_point_head`` MLP(512, 256, 256, 2);
  one class head Linear(256, 91) and one box head MLP(256, 256, 4, 3) shared by the six layers
  (``dec_pred_*_embed_share``), saved as ``class_embed.{0-5}``, ``bbox_embed.{0-5}`` and again
  under ``transformer.decoder.``; ``label_enc`` Embedding(92, 256) (dn_labelbook_size + 1).
* detrex (IDEA-Research/detrex ``projects/dino``, ``dino_r50_4scale_12ep.pth``): detectron2
  ResNet-50 ``backbone.*``; ChannelMapper ``neck.convs.{0-2}.{conv,norm}`` and
  ``neck.extra_convs.0.{conv,norm}``; ``transformer.level_embeds``; layers of
  ``BaseTransformerLayer``: ``attentions.{k}``, ``ffns.0.layers.{0.0,1}``, ``norms.{k}`` (the
  decoder's self-attention wrapped as ``attentions.0.attn``); seven unshared heads (the last for
  the encoder), also under ``transformer.decoder.``; ``label_enc`` Embedding(80, 256).
"""
from typing import Dict, Tuple

Shapes = Dict[str, Tuple[int, ...]]

D, FFN, HEADS, LEVELS, POINTS, QUERIES, LAYERS = 256, 2048, 8, 4, 4, 900, 6


def _linear(prefix: str, out_features: int, in_features: int) -> Shapes:
    return {f"{prefix}.weight": (out_features, in_features), f"{prefix}.bias": (out_features,)}


def _norm(prefix: str, channels: int = D) -> Shapes:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _mlp(prefix: str, dims) -> Shapes:
    out = {}
    for k, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        out.update(_linear(f"{prefix}.layers.{k}", o, i))
    return out


def _msda(prefix: str) -> Shapes:
    return {
        **_linear(f"{prefix}.sampling_offsets", HEADS * LEVELS * POINTS * 2, D),
        **_linear(f"{prefix}.attention_weights", HEADS * LEVELS * POINTS, D),
        **_linear(f"{prefix}.value_proj", D, D),
        **_linear(f"{prefix}.output_proj", D, D),
    }


def _mha(prefix: str) -> Shapes:
    return {f"{prefix}.in_proj_weight": (3 * D, D), f"{prefix}.in_proj_bias": (3 * D,), **_linear(f"{prefix}.out_proj", D, D)}


def torchvision_resnet50(prefix: str) -> Shapes:
    """torchvision ResNet-50 (v1.5, stride in the 3x3 conv) without fc; BN as FrozenBatchNorm2d."""
    def bn(p, c):
        return {f"{p}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}

    out = {f"{prefix}conv1.weight": (64, 3, 7, 7), **bn(f"{prefix}bn1", 64)}
    in_ch = 64
    for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{layer}.{b}"
            out[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            out.update(bn(f"{p}.bn1", width))
            out[f"{p}.conv2.weight"] = (width, width, 3, 3)
            out.update(bn(f"{p}.bn2", width))
            out[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
            out.update(bn(f"{p}.bn3", width * 4))
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (width * 4, in_ch, 1, 1)
                out.update(bn(f"{p}.downsample.1", width * 4))
            in_ch = width * 4
    return out


def official_dino_4scale(num_classes: int = 91) -> Shapes:
    """The official DINO-4scale R50 checkpoint's ``model`` entries and shapes."""
    out = torchvision_resnet50("backbone.0.body.")
    for i, c in enumerate((512, 1024, 2048)):
        out[f"input_proj.{i}.0.weight"] = (D, c, 1, 1)
        out[f"input_proj.{i}.0.bias"] = (D,)
        out.update(_norm(f"input_proj.{i}.1"))
    out["input_proj.3.0.weight"] = (D, 2048, 3, 3)
    out["input_proj.3.0.bias"] = (D,)
    out.update(_norm("input_proj.3.1"))
    t = "transformer"
    out[f"{t}.level_embed"] = (LEVELS, D)
    out[f"{t}.tgt_embed.weight"] = (QUERIES, D)
    out.update(_linear(f"{t}.enc_output", D, D))
    out.update(_norm(f"{t}.enc_output_norm"))
    out.update(_linear(f"{t}.enc_out_class_embed", num_classes, D))
    out.update(_mlp(f"{t}.enc_out_bbox_embed", (D, D, D, 4)))
    for i in range(LAYERS):
        p = f"{t}.encoder.layers.{i}"
        out.update({**_msda(f"{p}.self_attn"), **_norm(f"{p}.norm1"), **_linear(f"{p}.linear1", FFN, D),
                    **_linear(f"{p}.linear2", D, FFN), **_norm(f"{p}.norm2")})
    for i in range(LAYERS):
        p = f"{t}.decoder.layers.{i}"
        out.update({**_msda(f"{p}.cross_attn"), **_norm(f"{p}.norm1"), **_mha(f"{p}.self_attn"), **_norm(f"{p}.norm2"),
                    **_linear(f"{p}.linear1", FFN, D), **_linear(f"{p}.linear2", D, FFN), **_norm(f"{p}.norm3")})
    out.update(_norm(f"{t}.decoder.norm"))
    out.update(_mlp(f"{t}.decoder.ref_point_head", (2 * D, D, D)))
    for prefix in ("", f"{t}.decoder."):
        for i in range(LAYERS):
            out.update(_mlp(f"{prefix}bbox_embed.{i}", (D, D, D, 4)))
            out.update(_linear(f"{prefix}class_embed.{i}", num_classes, D))
    out["label_enc.weight"] = (num_classes + 1, D)
    return out


def detrex_resnet50(prefix: str) -> Shapes:
    """detectron2 ResNet-50 (stride_in_1x1=False) names, FrozenBN, no classifier."""
    def conv(p, o, i, k):
        norm = {f"{p}.norm.{n}": (o,) for n in ("weight", "bias", "running_mean", "running_var")}
        return {f"{p}.weight": (o, i, k, k), **norm}

    out = conv(f"{prefix}stem.conv1", 64, 3, 7)
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        for b in range(blocks):
            p = f"{prefix}res{stage}.{b}"
            if b == 0:
                out.update(conv(f"{p}.shortcut", width * 4, in_ch, 1))
            out.update({**conv(f"{p}.conv1", width, in_ch, 1), **conv(f"{p}.conv2", width, width, 3),
                        **conv(f"{p}.conv3", width * 4, width, 1)})
            in_ch = width * 4
    return out


def detrex_dino_4scale(num_classes: int = 80) -> Shapes:
    """detrex's DINO-4scale R50 checkpoint's ``model`` entries and shapes."""
    out = detrex_resnet50("backbone.")
    for i, c in enumerate((512, 1024, 2048)):
        out.update(_linear(f"neck.convs.{i}.conv", D, c))
        out[f"neck.convs.{i}.conv.weight"] = (D, c, 1, 1)
        out.update(_norm(f"neck.convs.{i}.norm"))
    out["neck.extra_convs.0.conv.weight"] = (D, 2048, 3, 3)
    out["neck.extra_convs.0.conv.bias"] = (D,)
    out.update(_norm("neck.extra_convs.0.norm"))
    t = "transformer"
    out[f"{t}.level_embeds"] = (LEVELS, D)
    out[f"{t}.tgt_embed.weight"] = (QUERIES, D)
    out.update(_linear(f"{t}.enc_output", D, D))
    out.update(_norm(f"{t}.enc_output_norm"))
    for i in range(LAYERS):
        p = f"{t}.encoder.layers.{i}"
        out.update({**_msda(f"{p}.attentions.0"), **_linear(f"{p}.ffns.0.layers.0.0", FFN, D),
                    **_linear(f"{p}.ffns.0.layers.1", D, FFN), **_norm(f"{p}.norms.0"), **_norm(f"{p}.norms.1")})
    for i in range(LAYERS):
        p = f"{t}.decoder.layers.{i}"
        out.update({**_mha(f"{p}.attentions.0.attn"), **_msda(f"{p}.attentions.1"),
                    **_linear(f"{p}.ffns.0.layers.0.0", FFN, D), **_linear(f"{p}.ffns.0.layers.1", D, FFN),
                    **_norm(f"{p}.norms.0"), **_norm(f"{p}.norms.1"), **_norm(f"{p}.norms.2")})
    out.update(_mlp(f"{t}.decoder.ref_point_head", (2 * D, D, D)))
    out.update(_norm(f"{t}.decoder.norm"))
    for prefix in ("", f"{t}.decoder."):
        for i in range(LAYERS + 1):
            out.update(_linear(f"{prefix}class_embed.{i}", num_classes, D))
            out.update(_mlp(f"{prefix}bbox_embed.{i}", (D, D, D, 4)))
    out["label_enc.weight"] = (num_classes, D)
    return out
