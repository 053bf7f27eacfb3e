"""The parameter names and shapes of the released DINO layouts, written down from the model
definitions (names and shapes only): IDEA-Research/DINO ``models/dino/{dino,deformable_transformer}.py``
with ``config/DINO/DINO_4scale.py``, and IDEA-Research/detrex ``projects/dino/modeling`` with
``detrex/layers`` and ``projects/dino/configs/models/dino_r50.py``.

The same rules at the release sizes give tests/fixtures/dino_{official,detrex}_r50_4scale.txt
(checked by tests/test_dino_checkpoint.py), and at small sizes the layouts the tests convert.

Official (two_stage_type="standard", embed_init_tgt=True, dec_pred_{class,bbox}_embed_share=True,
two_stage_{class,bbox}_embed_share=False, decoder_sa_type="sa"; modules that are None or have no
parameters leave no key):

    DINO: transformer, label_enc (dn_labelbook_size + 1, D), input_proj.{l}.{0: Conv2d, 1: GroupNorm},
          backbone.0.body (torchvision ResNet, FrozenBatchNorm2d: no num_batches_tracked, no fc),
          bbox_embed.{i} (one MLP repeated), class_embed.{i} (one Linear repeated)
    transformer: level_embed (L, D), encoder.layers.{i}, decoder (layers.{i}, norm, ref_point_head
          MLP(2D, D, D, 2), bbox_embed / class_embed: the DINO's lists), tgt_embed (Q, D),
          enc_output, enc_output_norm, enc_out_bbox_embed (a copy), enc_out_class_embed (a copy)
    encoder layer: self_attn (MSDeformAttn), norm1, linear1, linear2, norm2
    decoder layer: cross_attn (MSDeformAttn), norm1, self_attn (nn.MultiheadAttention), norm2,
          linear1, linear2, norm3
    MSDeformAttn: sampling_offsets (H*L*P*2, D), attention_weights (H*L*P, D), value_proj,
          output_proj (D, D)

detrex (``DINO`` with ``DINOTransformer``; num_pred = decoder layers + 1 deep-copied heads, the last
one the encoder's proposal head):

    DINO: backbone (detectron2 ResNet), neck (ChannelMapper: convs.{i}, extra_convs.{j}, each
          ConvNormAct: conv (bias), norm (GroupNorm)), transformer, class_embed.{0..n},
          bbox_embed.{0..n}, label_enc (K, D)
    transformer: level_embeds (L, D), encoder.layers.{i}, decoder (layers.{i}, ref_point_head,
          norm, class_embed / bbox_embed: the DINO's lists), tgt_embed, enc_output, enc_output_norm
    layer (BaseTransformerLayer): attentions.{k}, ffns.0.layers.{0.0: Linear(D, F), 1: Linear(F, D)},
          norms.{k}; encoder (self_attn, norm, ffn, norm), decoder (self_attn, norm, cross_attn,
          norm, ffn, norm); detrex's MultiheadAttention keeps nn.MultiheadAttention as ``attn``.
"""
import os
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch

__all__ = ["official_dino_layout", "detrex_dino_layout", "read_layout", "write_layout", "random_state_dict", "FIXTURES"]

Shapes = "OrderedDict[str, Tuple[int, ...]]"
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _torchvision_backbone(depth: int) -> Dict[str, Tuple[int, ...]]:
    import torchvision

    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    return OrderedDict(
        (k, tuple(v.shape)) for k, v in model.state_dict().items() if not (k.startswith("fc.") or k.endswith("num_batches_tracked"))
    )


def _detectron2_backbone(depth: int) -> Dict[str, Tuple[int, ...]]:
    from detectron2.modeling.backbone import BasicStem, ResNet

    model = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        # stride_in_1x1 is a bottleneck option (detrex's R50: False)
        stages=ResNet.make_default_stages(depth=depth, norm="FrozenBN", **({"stride_in_1x1": False} if depth >= 50 else {})),
        out_features=["res3", "res4", "res5"],
        freeze_at=1,
    )
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _channels(depth: int) -> Sequence[int]:
    """Channels of res3, res4, res5."""
    return (512, 1024, 2048) if depth >= 50 else (128, 256, 512)


def _msda(prefix: str, d: int, heads: int, levels: int, points: int) -> Dict[str, Tuple[int, ...]]:
    out = OrderedDict()
    for name, rows in (("sampling_offsets", heads * levels * points * 2), ("attention_weights", heads * levels * points),
                       ("value_proj", d), ("output_proj", d)):
        out[f"{prefix}.{name}.weight"], out[f"{prefix}.{name}.bias"] = (rows, d), (rows,)
    return out


def _linear(prefix: str, rows: int, cols: int) -> Dict[str, Tuple[int, ...]]:
    return OrderedDict([(f"{prefix}.weight", (rows, cols)), (f"{prefix}.bias", (rows,))])


def _norm(prefix: str, d: int) -> Dict[str, Tuple[int, ...]]:
    return OrderedDict([(f"{prefix}.weight", (d,)), (f"{prefix}.bias", (d,))])


def _mlp(prefix: str, dims: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    out = OrderedDict()
    for j, (cols, rows) in enumerate(zip(dims[:-1], dims[1:])):
        out.update(_linear(f"{prefix}.layers.{j}", rows, cols))
    return out


def _mha(prefix: str, d: int) -> Dict[str, Tuple[int, ...]]:
    return OrderedDict([(f"{prefix}.in_proj_weight", (3 * d, d)), (f"{prefix}.in_proj_bias", (3 * d,)),
                        (f"{prefix}.out_proj.weight", (d, d)), (f"{prefix}.out_proj.bias", (d,))])


def official_dino_layout(
    *, depth: int = 50, d: int = 256, heads: int = 8, ffn: int = 2048, levels: int = 4, points: int = 4,
    enc_layers: int = 6, dec_layers: int = 6, queries: int = 900, classes: int = 91, labelbook: int = 91,
) -> Shapes:
    """Names -> shapes of an IDEA-Research/DINO model (defaults: ``DINO_4scale.py``, R50)."""
    t = OrderedDict([("transformer.level_embed", (levels, d))])
    for i in range(enc_layers):
        p = f"transformer.encoder.layers.{i}"
        t.update(_msda(f"{p}.self_attn", d, heads, levels, points))
        t.update(_norm(f"{p}.norm1", d))
        t.update(_linear(f"{p}.linear1", ffn, d))
        t.update(_linear(f"{p}.linear2", d, ffn))
        t.update(_norm(f"{p}.norm2", d))
    for i in range(dec_layers):
        p = f"transformer.decoder.layers.{i}"
        t.update(_msda(f"{p}.cross_attn", d, heads, levels, points))
        t.update(_norm(f"{p}.norm1", d))
        t.update(_mha(f"{p}.self_attn", d))
        t.update(_norm(f"{p}.norm2", d))
        t.update(_linear(f"{p}.linear1", ffn, d))
        t.update(_linear(f"{p}.linear2", d, ffn))
        t.update(_norm(f"{p}.norm3", d))
    t.update(_norm("transformer.decoder.norm", d))
    t.update(_mlp("transformer.decoder.ref_point_head", (2 * d, d, d)))
    t.update(_heads("transformer.decoder.", dec_layers, classes, d, class_first=False))
    t["transformer.tgt_embed.weight"] = (queries, d)
    t.update(_linear("transformer.enc_output", d, d))
    t.update(_norm("transformer.enc_output_norm", d))
    t.update(_mlp("transformer.enc_out_bbox_embed", (d, d, d, 4)))
    t.update(_linear("transformer.enc_out_class_embed", classes, d))
    t["label_enc.weight"] = (labelbook + 1, d)
    channels = _channels(depth)
    for lvl in range(levels):
        cin, k = (channels[lvl], 1) if lvl < len(channels) else (channels[-1] if lvl == len(channels) else d, 3)
        t[f"input_proj.{lvl}.0.weight"], t[f"input_proj.{lvl}.0.bias"] = (d, cin, k, k), (d,)
        t.update(_norm(f"input_proj.{lvl}.1", d))
    t.update((f"backbone.0.body.{k}", v) for k, v in _torchvision_backbone(depth).items())
    t.update(_heads("", dec_layers, classes, d, class_first=False))
    return t


def detrex_dino_layout(
    *, depth: int = 50, d: int = 256, heads: int = 8, ffn: int = 2048, levels: int = 4, points: int = 4,
    enc_layers: int = 6, dec_layers: int = 6, queries: int = 900, classes: int = 80,
) -> Shapes:
    """Names -> shapes of a detrex DINO model (defaults: ``dino_r50.py``)."""
    t = OrderedDict((f"backbone.{k}", v) for k, v in _detectron2_backbone(depth).items())
    channels = _channels(depth)
    for i, cin in enumerate(channels):
        t[f"neck.convs.{i}.conv.weight"], t[f"neck.convs.{i}.conv.bias"] = (d, cin, 1, 1), (d,)
        t.update(_norm(f"neck.convs.{i}.norm", d))
    for j in range(levels - len(channels)):
        cin = channels[-1] if j == 0 else d
        t[f"neck.extra_convs.{j}.conv.weight"], t[f"neck.extra_convs.{j}.conv.bias"] = (d, cin, 3, 3), (d,)
        t.update(_norm(f"neck.extra_convs.{j}.norm", d))
    t["transformer.level_embeds"] = (levels, d)
    for i in range(enc_layers):
        p = f"transformer.encoder.layers.{i}"
        t.update(_msda(f"{p}.attentions.0", d, heads, levels, points))
        t.update(_linear(f"{p}.ffns.0.layers.0.0", ffn, d))
        t.update(_linear(f"{p}.ffns.0.layers.1", d, ffn))
        for k in range(2):
            t.update(_norm(f"{p}.norms.{k}", d))
    for i in range(dec_layers):
        p = f"transformer.decoder.layers.{i}"
        t.update(_mha(f"{p}.attentions.0.attn", d))
        t.update(_msda(f"{p}.attentions.1", d, heads, levels, points))
        t.update(_linear(f"{p}.ffns.0.layers.0.0", ffn, d))
        t.update(_linear(f"{p}.ffns.0.layers.1", d, ffn))
        for k in range(3):
            t.update(_norm(f"{p}.norms.{k}", d))
    t.update(_mlp("transformer.decoder.ref_point_head", (2 * d, d, d)))
    t.update(_norm("transformer.decoder.norm", d))
    t.update(_heads("transformer.decoder.", dec_layers + 1, classes, d, class_first=True))
    t["transformer.tgt_embed.weight"] = (queries, d)
    t.update(_linear("transformer.enc_output", d, d))
    t.update(_norm("transformer.enc_output_norm", d))
    t.update(_heads("", dec_layers + 1, classes, d, class_first=True))
    t["label_enc.weight"] = (classes, d)
    return t


def _heads(prefix: str, n: int, classes: int, d: int, *, class_first: bool) -> Dict[str, Tuple[int, ...]]:
    """n class heads Linear(d, classes) and n box heads MLP(d, d, 4, 3), as two module lists."""
    class_heads, box_heads = OrderedDict(), OrderedDict()
    for i in range(n):
        class_heads.update(_linear(f"{prefix}class_embed.{i}", classes, d))
        box_heads.update(_mlp(f"{prefix}bbox_embed.{i}", (d, d, d, 4)))
    return OrderedDict([*class_heads.items(), *box_heads.items()] if class_first else [*box_heads.items(), *class_heads.items()])


def write_layout(path: str, layout: Shapes, header: str) -> None:
    with open(path, "w") as f:
        f.write("".join(f"# {line}\n" for line in header.splitlines()))
        f.writelines(f"{k} {' '.join(map(str, v))}\n" for k, v in layout.items())


def read_layout(path: str) -> Shapes:
    """A fixture file: one ``name dim dim ...`` line per tensor, ``#`` comments."""
    out = OrderedDict()
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, *dims = line.split()
                out[name] = tuple(int(x) for x in dims)
    return out


def random_state_dict(layout: Shapes, *, aliases: Dict[str, str], seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors of ``layout``'s shapes; ``aliases[key] = other`` makes ``key`` the same tensor
    as ``other`` (the official files save shared/aliased heads once per name, one storage).
    Variances/"running_var" are positive."""
    gen = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        if key in aliases:
            continue
        value = 0.1 * torch.randn(shape, generator=gen)
        out[key] = value.abs() + 0.5 if key.endswith("running_var") else value
    for key, other in aliases.items():
        out[key] = out[other]
    return OrderedDict((k, out[k]) for k in layout)
