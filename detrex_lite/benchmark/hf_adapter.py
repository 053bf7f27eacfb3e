"""Hugging Face transformers' ``DeformableDetrForObjectDetection`` with a config's architecture,
behind our model's call (``tools/benchmark.py --compare-hf``). transformers is imported on use."""
import os
from typing import Dict

import torch

__all__ = ["hf_config_from", "hf_attention_path", "HFDetector", "build_hf_model", "hf_summary"]


def hf_config_from(cfg, num_classes: int):
    """A ``transformers.DeformableDetrConfig`` with the architecture of ``cfg.model``.

    Same d_model, layers, heads, FFN width, dropout, activation, levels, points, queries,
    two-stage / box-refinement / auxiliary-loss flags, matcher costs and loss weights; the backbone
    is HF's own ResNet (``ResNetConfig``: same depth, widths and stem, stride in the 3x3 conv like
    ``stride_in_1x1=False``) with ``use_timm_backbone=False`` and ``use_pretrained_backbone=False``.
    """
    import transformers

    # The blocks per ResNet stage for a depth: build_resnet's own table. No public accessor gives
    # them without building the network (resnet_output_shape has channels and strides only), so
    # this adapter is the one place outside the backbone that reads it.
    from detrex_lite.modeling.backbone import _BLOCKS_PER_STAGE

    m = cfg.model
    backbone, t = m.backbone, m.transformer
    if backbone.get("res5_dilation", 1) != 1 or backbone.get("stride_in_1x1", False):
        raise ValueError("--compare-hf: HF's ResNet backbone has no DC5 / stride_in_1x1=True variant")
    depth, stem = backbone.depth, backbone.get("stem_out_channels", 64)
    bottleneck = depth >= 50
    out_features = [f"stage{int(name[3:]) - 1}" for name in backbone.out_features]  # res3 -> stage2
    backbone_config = transformers.ResNetConfig(
        embedding_size=stem,
        hidden_sizes=[stem * (4 if bottleneck else 1) * 2**i for i in range(4)],
        depths=list(_BLOCKS_PER_STAGE[depth]),
        layer_type="bottleneck" if bottleneck else "basic",
        downsample_in_bottleneck=False,
        out_features=out_features,
    )
    criterion = m.get("criterion", {})
    matcher = criterion.get("matcher", {})
    weights = criterion.get("weight_dict", {})
    return transformers.DeformableDetrConfig(
        backbone_config=backbone_config,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=t.d_model,
        encoder_layers=t.num_encoder_layers,
        decoder_layers=t.num_decoder_layers,
        encoder_attention_heads=t.nhead,
        decoder_attention_heads=t.nhead,
        encoder_ffn_dim=t.dim_feedforward,
        decoder_ffn_dim=t.dim_feedforward,
        dropout=t.dropout,
        activation_function=t.get("activation", "relu"),
        num_feature_levels=t.num_feature_levels,
        encoder_n_points=t.enc_n_points,
        decoder_n_points=t.dec_n_points,
        num_queries=m.num_queries,
        two_stage=bool(m.as_two_stage),
        two_stage_num_proposals=m.num_queries,
        with_box_refine=bool(m.with_box_refine),
        auxiliary_loss=bool(m.aux_loss),
        num_labels=num_classes,
        # HF types these as int (its strict config refuses 2.0); they do not change the speed.
        class_cost=_int_if_whole(matcher.get("cost_class", 2)),
        bbox_cost=_int_if_whole(matcher.get("cost_bbox", 5)),
        giou_cost=_int_if_whole(matcher.get("cost_giou", 2)),
        bbox_loss_coefficient=_int_if_whole(weights.get("loss_bbox", 5)),
        giou_loss_coefficient=_int_if_whole(weights.get("loss_giou", 2)),
        focal_alpha=float(criterion.get("alpha", 0.25)),
    )


def _int_if_whole(x):
    return int(x) if float(x).is_integer() else float(x)


def hf_attention_path() -> str:
    """Which multi-scale deformable attention HF runs: the hub kernel needs the `kernels` package
    (and a download), and transformers uses it unless its documented ``USE_HUB_KERNELS``
    environment variable says no; otherwise transformers runs its grid_sample implementation."""
    from transformers.utils import ENV_VARS_TRUE_VALUES, is_kernels_available

    if is_kernels_available() and os.environ.get("USE_HUB_KERNELS", "YES").upper() in ENV_VARS_TRUE_VALUES:
        return "kernels hub (if it could be fetched)"
    return "PyTorch grid_sample (the `kernels` package is not installed)"


class HFDetector(torch.nn.Module):
    """``DeformableDetrForObjectDetection`` behind our model's input convention, so that both
    models take the same detectron2-style batches: uint8 RGB images moved to the device and
    normalised inside the timed call (as our model does), targets as normalised cxcywh.
    Training returns HF's own loss; inference returns HF's raw outputs (no post-processing,
    which our timing includes)."""

    def __init__(self, hf_model, pixel_mean, pixel_std):
        super().__init__()
        self.hf = hf_model
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def forward(self, batched_inputs):
        device = self.pixel_mean.device
        images = torch.stack([x["image"] for x in batched_inputs]).to(device, non_blocking=True)
        pixel_values = (images.float() - self.pixel_mean) / self.pixel_std
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long, device=device)
        if not self.training:
            return self.hf(pixel_values=pixel_values, pixel_mask=pixel_mask)
        labels = []
        for x in batched_inputs:
            h, w = x["image"].shape[-2:]
            boxes = x["instances"].gt_boxes.tensor / torch.tensor([w, h, w, h], dtype=torch.float32)
            cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)
            labels.append({"class_labels": x["instances"].gt_classes.to(device), "boxes": cxcywh.to(device)})
        return {"loss": self.hf(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss}


def build_hf_model(cfg, num_classes: int, device: torch.device) -> HFDetector:
    import transformers

    hf_model = transformers.DeformableDetrForObjectDetection(hf_config_from(cfg, num_classes))
    return HFDetector(hf_model, list(cfg.model.pixel_mean), list(cfg.model.pixel_std)).to(device)


def hf_summary(hf_detector: HFDetector, ours: torch.nn.Module) -> Dict:
    """The report's ``hf_transformers`` entry: transformers' version, the HF configuration (less
    its label maps), which attention it runs and both models' parameter counts."""
    import transformers

    return {
        "version": transformers.__version__,
        "config": {k: v for k, v in hf_detector.hf.config.to_diff_dict().items() if k not in ("id2label", "label2id")},
        "attention": hf_attention_path(),
        "parameters": sum(p.numel() for p in hf_detector.parameters()),
        "detrex_lite_parameters": sum(p.numel() for p in ours.parameters()),
    }
