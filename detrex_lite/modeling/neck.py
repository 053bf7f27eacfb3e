"""ChannelMapper: project backbone levels to a common width and add extra strided levels."""
from typing import Dict, List, Sequence

import torch
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["ChannelMapper"]


def _norm(norm: str, num_groups: int, channels: int) -> nn.Module:
    if norm == "GN":
        return nn.GroupNorm(num_groups, channels)
    if norm in ("", None):
        return nn.Identity()
    raise ValueError(f"ChannelMapper: norm must be 'GN' or '', got {norm!r}")


class ChannelMapper(nn.Module):
    """The ``input_proj`` of Deformable DETR as a neck.

    Level i < len(in_features) is ``conv(k x k) + GroupNorm`` on ``in_features[i]``; each extra
    level (``num_outs > len(in_features)``) is a stride-2 3x3 conv + GroupNorm, the first on the raw
    last input feature (C5), the next ones on the previous output (official Deformable DETR).
    Modules live in ``input_proj.{i}.{0: conv, 1: norm}``, the official layout.

    Args:
        input_shapes: the backbone's ``output_shape()`` (channels and strides by name).
        in_features: the backbone outputs to use, finest first (e.g. ["res3", "res4", "res5"]).
        out_channels: d, the width of every output level.
        num_outs: the number of output levels.
        kernel_size: kernel of the input-level convs (1 in Deformable DETR).
        norm: "GN" or "" (no norm, the convs then get a bias anyway).
        num_groups: GroupNorm groups.
    """

    def __init__(
        self,
        input_shapes: Dict[str, ShapeSpec],
        in_features: Sequence[str],
        out_channels: int = 256,
        num_outs: int = 4,
        kernel_size: int = 1,
        norm: str = "GN",
        num_groups: int = 32,
    ):
        super().__init__()
        in_features = list(in_features)
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"ChannelMapper: in_features {missing} not among the backbone outputs {list(input_shapes)}")
        if num_outs < len(in_features):
            raise ValueError(f"ChannelMapper: num_outs={num_outs} < len(in_features)={len(in_features)}")
        self.in_features = in_features
        self.out_channels = out_channels
        self.num_outs = num_outs

        layers = []
        for name in in_features:
            conv = nn.Conv2d(input_shapes[name].channels, out_channels, kernel_size, padding=kernel_size // 2)
            layers.append(nn.Sequential(conv, _norm(norm, num_groups, out_channels)))
        in_channels = input_shapes[in_features[-1]].channels
        for _ in range(num_outs - len(in_features)):
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
            layers.append(nn.Sequential(conv, _norm(norm, num_groups, out_channels)))
            in_channels = out_channels
        self.input_proj = nn.ModuleList(layers)

        last_stride = input_shapes[in_features[-1]].stride
        strides = [input_shapes[f].stride for f in in_features]
        strides += [last_stride * 2 ** (i + 1) for i in range(num_outs - len(in_features))]
        self.strides = strides
        self.reset_parameters()

    def reset_parameters(self):
        # Official initialisation of input_proj.
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

    def output_shape(self) -> List[ShapeSpec]:
        return [ShapeSpec(channels=self.out_channels, stride=s) for s in self.strides]

    def forward(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features: backbone outputs by name, (N, C_l, H_l, W_l).

        Returns:
            ``num_outs`` maps (N, out_channels, H_l, W_l), finest first.
        """
        outs = [proj(features[name]) for proj, name in zip(self.input_proj, self.in_features)]
        x = features[self.in_features[-1]]
        for proj in self.input_proj[len(self.in_features):]:
            x = proj(x)
            outs.append(x)
        return outs
