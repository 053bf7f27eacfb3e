"""A model family's Hugging Face transformers counterpart behind our model's call
(``tools/benchmark.py --compare-hf``): the model class builds it through its
``transformers_reference`` hook; this module gives it our input convention. transformers is
imported on use."""
import os
from typing import Dict

import torch

__all__ = ["hf_attention_path", "HFDetector", "build_hf_model", "hf_summary"]


def hf_attention_path() -> str:
    """Which multi-scale deformable attention HF runs: the hub kernel needs the `kernels` package
    (and a download), and transformers uses it unless its documented ``USE_HUB_KERNELS``
    environment variable says no; otherwise transformers runs its grid_sample implementation."""
    from transformers.utils import ENV_VARS_TRUE_VALUES, is_kernels_available

    if is_kernels_available() and os.environ.get("USE_HUB_KERNELS", "YES").upper() in ENV_VARS_TRUE_VALUES:
        return "kernels hub (if it could be fetched)"
    return "PyTorch grid_sample (the `kernels` package is not installed)"


class HFDetector(torch.nn.Module):
    """A transformers ``...ForObjectDetection`` model behind our model's input convention, so that both
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


def _model_class(cfg) -> type:
    """The class ``cfg.model`` builds (its ``_target_``, an object or a dotted name)."""
    from detectron2.utils.registry import locate

    target = cfg.model._target_
    return locate(target) if isinstance(target, str) else target


def build_hf_model(cfg, num_classes: int, device: torch.device) -> HFDetector:
    """The transformers counterpart of the model ``cfg.model`` builds (its class's
    ``transformers_reference(model_cfg, num_classes)`` hook), behind our input convention."""
    hf_model = _model_class(cfg).transformers_reference(cfg.model, num_classes)
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
