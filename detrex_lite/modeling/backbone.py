"""Builders of detectron2 ResNets for DETR-family models (callable from LazyConfig)."""
from typing import Sequence

from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

__all__ = ["build_resnet"]

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


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
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"build_resnet: depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"build_resnet: res5_dilation must be 1 or 2, got {res5_dilation}")
    bottleneck = depth >= 50
    if res5_dilation == 2 and not bottleneck:
        raise ValueError("build_resnet: res5_dilation=2 (DC5) needs depth >= 50 (BottleneckBlock)")

    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    width = stem_out_channels
    stage_in = stem_out_channels
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        stage_out = width * 2**idx * (4 if bottleneck else 1)
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
