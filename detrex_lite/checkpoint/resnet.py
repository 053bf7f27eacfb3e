"""ResNet weights: torchvision (also timm and the official DETR / Deformable-DETR backbones,
which use torchvision's names) and Hugging Face ``ResNetModel`` -> detectron2's ``ResNet``.

detectron2 names (``detectron2.modeling.backbone.resnet``)::

    stem.conv1.weight, stem.conv1.norm.{weight,bias,running_mean,running_var}
    res{2..5}.{block}.conv{1,2,3}.weight, ....conv{k}.norm.*, ....shortcut.weight, ....shortcut.norm.*

torchvision names::

    conv1.weight, bn1.*, layer{1..4}.{block}.conv{k}.weight, ....bn{k}.*,
    ....downsample.0.weight (1x1 conv), ....downsample.1.* (BatchNorm), fc.{weight,bias}

torchvision puts the stride of a bottleneck block in its 3x3 conv, so the detectron2 ResNet that
receives these weights must be built with ``stride_in_1x1=False`` (detectron2's MSRA default is
True); BatchNorm statistics become FrozenBatchNorm2d buffers of the same names.
"""
from typing import Dict, Mapping, Tuple

import torch

from .rename import ConversionError, Rule, add_prefix, rename_keys, split_by_prefix

__all__ = [
    "convert_torchvision_resnet",
    "hf_resnet_to_torchvision",
    "is_torchvision_resnet",
    "is_hf_resnet",
    "split_official_backbone",
    "split_hf_backbone",
]

_BN = r"(weight|bias|running_mean|running_var)"


def _res(match) -> str:
    # torchvision layer1..layer4 are detectron2 res2..res5
    return f"res{int(match['layer']) + 1}.{match['block']}"


def _torchvision_rules(keep_fc: bool):
    return [
        Rule(r".*num_batches_tracked", None),
        Rule(r"conv1\.weight", "stem.conv1.weight"),
        Rule(rf"bn1\.{_BN}", r"stem.conv1.norm.\1"),
        Rule(
            r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.conv(?P<k>[1-3])\.weight",
            lambda m: f"{_res(m)}.conv{m['k']}.weight",
        ),
        Rule(
            rf"layer(?P<layer>[1-4])\.(?P<block>\d+)\.bn(?P<k>[1-3])\.{_BN}",
            lambda m: f"{_res(m)}.conv{m['k']}.norm.{m[4]}",
        ),
        Rule(
            r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.downsample\.0\.weight",
            lambda m: f"{_res(m)}.shortcut.weight",
        ),
        Rule(
            rf"layer(?P<layer>[1-4])\.(?P<block>\d+)\.downsample\.1\.{_BN}",
            lambda m: f"{_res(m)}.shortcut.norm.{m[3]}",
        ),
        # detectron2's ResNet(num_classes=...) calls its classifier `linear`
        Rule(r"fc\.(weight|bias)", r"linear.\1" if keep_fc else None),
    ]


def convert_torchvision_resnet(
    state_dict: Mapping[str, torch.Tensor], *, keep_fc: bool = False
) -> Dict[str, torch.Tensor]:
    """torchvision ResNet (BasicBlock or Bottleneck) names -> detectron2 ResNet names.

    Args:
        state_dict: e.g. ``torchvision.models.resnet50(weights=...).state_dict()``, or the
            ``backbone.0.body.*`` part of an official DETR / Deformable-DETR checkpoint with that
            prefix removed. Hugging Face ``ResNetModel`` names are accepted too (converted with
            :func:`hf_resnet_to_torchvision` first).
        keep_fc: keep the ImageNet classifier as ``linear.*`` (detection models drop it).

    Returns:
        detectron2 names without any prefix (add ``backbone.`` to load into a detector).
    """
    if is_hf_resnet(state_dict):
        state_dict = hf_resnet_to_torchvision(state_dict)
    return rename_keys(state_dict, _torchvision_rules(keep_fc), what="torchvision ResNet")


def _hf_layer(match) -> str:
    # HF stages.0..3 are torchvision layer1..layer4
    return f"layer{int(match['stage']) + 1}.{match['block']}"


_HF_RULES = [
    Rule(r".*num_batches_tracked", None),
    Rule(r"embedder\.embedder\.convolution\.weight", "conv1.weight"),
    Rule(rf"embedder\.embedder\.normalization\.{_BN}", r"bn1.\1"),
    Rule(
        r"encoder\.stages\.(?P<stage>\d)\.layers\.(?P<block>\d+)\.shortcut\.convolution\.weight",
        lambda m: f"{_hf_layer(m)}.downsample.0.weight",
    ),
    Rule(
        rf"encoder\.stages\.(?P<stage>\d)\.layers\.(?P<block>\d+)\.shortcut\.normalization\.{_BN}",
        lambda m: f"{_hf_layer(m)}.downsample.1.{m[3]}",
    ),
    Rule(
        r"encoder\.stages\.(?P<stage>\d)\.layers\.(?P<block>\d+)\.layer\.(?P<k>\d)\.convolution\.weight",
        lambda m: f"{_hf_layer(m)}.conv{int(m['k']) + 1}.weight",
    ),
    Rule(
        rf"encoder\.stages\.(?P<stage>\d)\.layers\.(?P<block>\d+)\.layer\.(?P<k>\d)\.normalization\.{_BN}",
        lambda m: f"{_hf_layer(m)}.bn{int(m['k']) + 1}.{m[4]}",
    ),
]


def hf_resnet_to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Hugging Face ``ResNetModel`` / ``ResNetBackbone`` names -> torchvision names.

    Only the default HF layout converts exactly: ``downsample_in_bottleneck=False`` (stride in the
    3x3 conv, as torchvision) and ``downsample_in_first_stage=False``.
    """
    return rename_keys(state_dict, _HF_RULES, what="Hugging Face ResNet")


def is_hf_resnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("embedder.embedder.") for k in state_dict)


def is_torchvision_resnet(state_dict: Mapping[str, torch.Tensor]) -> bool:
    keys = set(state_dict)
    return "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys)



# Where detectors keep their ResNet: the official DETR-family repositories (torchvision names
# under a Joiner -> BackboneBase), and Hugging Face DETR-family models ("conv_encoder.model." in
# saved files, also what transformers 5's save_pretrained writes; "model." in its module tree).
_OFFICIAL_BACKBONE = r"backbone\.0\.body\."
_HF_BACKBONE = r"model\.backbone\.(?:conv_encoder\.)?model\."


def split_official_backbone(
    state_dict: Mapping[str, torch.Tensor], *, what: str
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(the ``backbone.0.body.*`` ResNet in detectron2 names under ``backbone.``, the other keys
    unchanged) of an official DETR-family checkpoint; ``what`` names the source in errors."""
    backbone, rest = split_by_prefix(state_dict, _OFFICIAL_BACKBONE)
    if not backbone:
        raise ConversionError(f"{what}: no 'backbone.0.body.' weights found")
    return add_prefix(convert_torchvision_resnet(backbone), "backbone."), rest


def split_hf_backbone(
    state_dict: Mapping[str, torch.Tensor], *, what: str
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(the ResNet of a Hugging Face DETR-family model, HF ResNet or timm, in torchvision names
    under ``backbone.0.body.`` as the official checkpoints have it, the other keys unchanged)."""
    backbone, rest = split_by_prefix(state_dict, _HF_BACKBONE)
    if not backbone:
        raise ConversionError(f"{what}: no 'model.backbone.' weights found")
    if is_hf_resnet(backbone):
        backbone = hf_resnet_to_torchvision(backbone)
    backbone = {k: v for k, v in backbone.items() if not k.endswith("num_batches_tracked")}
    return add_prefix(backbone, "backbone.0.body."), rest
