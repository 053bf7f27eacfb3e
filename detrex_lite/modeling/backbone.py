"""Builders of detectron2 ResNets for DETR-family models (callable from LazyConfig)."""
from typing import Dict, Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = ["build_resnet", "resnet_output_shape"]

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _check(depth: int, res5_dilation: int) -> None:
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"build_resnet: depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"build_resnet: res5_dilation must be 1 or 2, got {res5_dilation}")
    if res5_dilation == 2 and depth < 50:
        raise ValueError("build_resnet: res5_dilation=2 (DC5) needs depth >= 50 (BottleneckBlock)")


def _stage_shapes(depth: int, stem_out_channels: int, res5_dilation: int) -> Dict[str, ShapeSpec]:
    """Channels and stride of "stem", "res2" .. "res5" (the one place this arithmetic lives)."""
    shapes = {"stem": ShapeSpec(channels=stem_out_channels, stride=4)}
    expansion = 4 if depth >= 50 else 1  # BottleneckBlock / BasicBlock
    for idx in range(4):
        stride = 4 * 2**idx if idx < 3 or res5_dilation == 1 else 16
        shapes[f"res{idx + 2}"] = ShapeSpec(channels=stem_out_channels * 2**idx * expansion, stride=stride)
    return shapes


def resnet_output_shape(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    res5_dilation: int = 1,
    stem_out_channels: int = 64,
) -> Dict[str, ShapeSpec]:
    """``build_resnet(...).output_shape()`` from the same arguments, without building the network.

    Lets a config give the neck the backbone's output shapes by interpolating the backbone's own
    fields (``input_shapes=L(resnet_output_shape)(depth="${...backbone.depth}", ...)``), so the
    channels and strides are stated once.

    Returns:
        {name: ShapeSpec(channels, stride)} for each of ``out_features``.
    """
    _check(depth, res5_dilation)
    shapes = _stage_shapes(depth, stem_out_channels, res5_dilation)
    unknown = [f for f in out_features if f not in shapes]
    if unknown:
        raise ValueError(f"resnet_output_shape: out_features {unknown} not among {list(shapes)}")
    return {name: shapes[name] for name in out_features}


def build_resnet(
    depth: int = 50,
    out_features: Sequence[str] = ("res3", "res4", "res5"),
    freeze_at: int = 1,
    norm: str = "FrozenBN",
    stride_in_1x1: bool = False,
    res5_dilation: int = 1,
    stem_out_channels: int = 64,
    in_channels: int = 3,
) -> ResNet:
    """A detectron2 ``ResNet`` laid out like torchvision's.

    Args:
        depth: 18 or 34 (BasicBlock), 50, 101 or 152 (BottleneckBlock).
        out_features: stages to return, from "stem", "res2" .. "res5".
        freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and res2 (official
            Deformable DETR), and so on.
        norm: "FrozenBN" (pretrained statistics kept), "BN", "GN", "SyncBN", ...
        stride_in_1x1: False puts the stride in the 3x3 conv (torchvision/ResNet-v1.5 weights);
            True is the MSRA/Caffe2 layout.
        res5_dilation: 2 for the DC5 variant (res5 keeps stride 16 and dilates its 3x3 convs);
            needs BottleneckBlock (depth >= 50).
        stem_out_channels: 64 for the standard networks; smaller values give narrow networks
            (all stage widths scale with it) for tests and demos.
        in_channels: image channels.
    """
    _check(depth, res5_dilation)
    bottleneck = depth >= 50
    shapes = _stage_shapes(depth, stem_out_channels, res5_dilation)

    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    stage_in = stem_out_channels
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        stage_out = shapes[f"res{idx + 2}"].channels
        dilation = res5_dilation if idx == 3 else 1
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        kwargs = dict(
            num_blocks=num_blocks,
            stride_per_block=[first_stride] + [1] * (num_blocks - 1),
            in_channels=stage_in,
            out_channels=stage_out,
            norm=norm,
        )
        if bottleneck:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=stage_out // 4,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
            )
        else:
            kwargs.update(block_class=BasicBlock)
        stages.append(ResNet.make_stage(**kwargs))
        stage_in = stage_out
    return ResNet(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
