"""torchvision / Hugging Face ResNet weights -> detectron2 ResNet: the converted model must compute
the same features as the source model (eval mode, same input)."""
import pytest
import torch
import torchvision
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet

from detrex_lite.checkpoint.rename import ConversionError
from detrex_lite.checkpoint.resnet import convert_torchvision_resnet, hf_resnet_to_torchvision


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm affine parameters and statistics, so that a swapped mean/var or a
    dropped buffer changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def d2_resnet_like_hf(hf_config, out_features) -> ResNet:
    """A detectron2 ResNet with the channel layout of a (tiny) Hugging Face ResNetConfig."""
    assert hf_config.layer_type == "bottleneck" and not hf_config.downsample_in_bottleneck
    stages, in_channels = [], hf_config.embedding_size
    for i, (out_channels, depth) in enumerate(zip(hf_config.hidden_sizes, hf_config.depths)):
        first_stride = 2 if (i > 0 or hf_config.downsample_in_first_stage) else 1
        stages.append(
            ResNet.make_stage(
                BottleneckBlock,
                depth,
                in_channels=in_channels,
                out_channels=out_channels,
                bottleneck_channels=out_channels // 4,
                stride_per_block=[first_stride] + [1] * (depth - 1),
                norm="FrozenBN",
                stride_in_1x1=False,
            )
        )
        in_channels = out_channels
    stem = BasicStem(3, hf_config.embedding_size, norm="FrozenBN")
    return ResNet(stem, stages, out_features=out_features).eval()


def _torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        feats[f"res{i + 1}"] = x
    return feats


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_features_match(depth):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_batchnorm(tv)
    tv.eval()
    converted = convert_torchvision_resnet(tv.state_dict())
    assert not any("num_batches_tracked" in k or k.startswith("linear") for k in converted)

    kwargs = {"stride_in_1x1": False} if depth >= 50 else {}
    stem = BasicStem(3, 64, norm="FrozenBN")
    stages = ResNet.make_default_stages(depth, norm="FrozenBN", **kwargs)
    d2 = ResNet(stem, stages, out_features=["res2", "res3", "res4", "res5"]).eval()
    d2.load_state_dict(converted, strict=True)  # no missing, no unexpected keys

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = _torchvision_features(tv, x)
        out = d2(x)
    for name in ["res2", "res3", "res4", "res5"]:
        assert out[name].shape == ref[name].shape
        torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=1e-4)


def test_torchvision_classifier_kept_on_request():
    tv = torchvision.models.resnet18(weights=None)
    converted = convert_torchvision_resnet(tv.state_dict(), keep_fc=True)
    assert torch.equal(converted["linear.weight"], tv.fc.weight)
    assert torch.equal(converted["linear.bias"], tv.fc.bias)


def test_hf_resnet_features_match():
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[32, 64, 128, 256],
        depths=[1, 2, 1, 1],
        layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"],
    )
    torch.manual_seed(0)
    hf = transformers.ResNetBackbone(config)
    randomize_batchnorm(hf, seed=1)
    hf.eval()
    tv_names = hf_resnet_to_torchvision(hf.state_dict())
    assert "layer2.1.conv3.weight" in tv_names and "layer2.0.downsample.1.running_var" in tv_names
    converted = convert_torchvision_resnet(hf.state_dict())  # HF names are detected
    d2 = d2_resnet_like_hf(config, ["res3", "res4", "res5"])
    d2.load_state_dict(converted, strict=True)

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = hf(x).feature_maps
        out = d2(x)
    for r, name in zip(ref, ["res3", "res4", "res5"]):
        torch.testing.assert_close(out[name], r, rtol=1e-4, atol=1e-4)


def test_unknown_key_is_reported_by_name():
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["layer1.0.se.fc.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"layer1\.0\.se\.fc\.weight"):
        convert_torchvision_resnet(sd)
