"""A deliberately small detector that follows the detrex_lite model contract (list[dict] in,
weighted loss dict in training, Instances at the original size in eval), so that the engine
tests (trainer, checkpoints, resume, distributed) run in seconds on a CPU and do not depend on
the Deformable DETR implementation. test_train_net_deformable.py runs the real model."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import Boxes, Instances


class ToyBackbone(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.frozen = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.norm(self.conv1(x)))))


class ToyDetector(nn.Module):
    """Pooled features -> `num_queries` (class logits, sigmoid cxcywh box); query i learns the
    i-th ground-truth box of each image (no Hungarian matching: the trainer is under test)."""

    def __init__(
        self, *, num_classes: int, num_queries: int = 6, channels: int = 8, loss_weight: float = 1.0,
        checkpoint_padding: int = 0, nan_gradient: bool = False,
    ):
        """checkpoint_padding: elements of an unused persistent buffer that make checkpoints
        big enough (slow enough to write) for a test to kill a run during a save.
        nan_gradient: add 0 * sqrt(0) to loss_class: the loss stays finite, the gradient of the
        query embedding is NaN (as in a run that diverges inside one step)."""
        super().__init__()
        self.nan_gradient = nan_gradient
        self.register_buffer("padding", torch.zeros(checkpoint_padding))
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.loss_weight = loss_weight
        self.backbone = ToyBackbone(channels)
        self.query_embed = nn.Embedding(num_queries, channels)
        self.class_head = nn.Linear(channels, num_classes + 1)
        self.box_head = nn.Linear(channels, 4)
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def _predict(self, images: List[torch.Tensor]):
        feats = [self.backbone(((im.to(self.device).float() - self.pixel_mean) / self.pixel_std)[None]) for im in images]
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats])  # (N, C)
        queries = pooled[:, None, :] + self.query_embed.weight[None]  # (N, Q, C)
        return self.class_head(queries), self.box_head(queries).sigmoid()

    def forward(self, batched_inputs: List[Dict]):
        logits, boxes = self._predict([x["image"] for x in batched_inputs])
        if self.training:
            return self.losses(batched_inputs, logits, boxes)
        results = []
        for x, lg, bx in zip(batched_inputs, logits, boxes):
            h, w = x["height"], x["width"]
            scores, classes = lg.softmax(-1)[:, : self.num_classes].max(-1)
            cx, cy, bw, bh = bx.unbind(-1)
            xyxy = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(xyxy)
            inst.scores = scores
            inst.pred_classes = classes
            results.append({"instances": inst})
        return results

    def losses(self, batched_inputs, logits, boxes):
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=self.device)
        box_terms = []
        for i, x in enumerate(batched_inputs):
            inst = x["instances"].to(self.device)
            n = min(len(inst), self.num_queries)
            if n == 0:
                continue
            target_classes[i, :n] = inst.gt_classes[:n]
            h, w = x["image"].shape[-2:]
            gt = inst.gt_boxes.tensor[:n] / torch.tensor([w, h, w, h], device=self.device, dtype=torch.float32)
            gt_cxcywh = torch.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2, gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]], -1)
            box_terms.append(F.l1_loss(boxes[i, :n], gt_cxcywh, reduction="sum"))
        num_boxes = max(sum(min(len(x["instances"]), self.num_queries) for x in batched_inputs), 1)
        loss_bbox = torch.stack(box_terms).sum() / num_boxes if box_terms else boxes.sum() * 0.0
        loss_class = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten())
        if self.nan_gradient:
            w = self.query_embed.weight
            loss_class = loss_class + 0.0 * torch.sqrt(w - w.detach()).sum()  # d sqrt(u)/du at 0 = inf
        return {"loss_class": self.loss_weight * loss_class, "loss_bbox": 5.0 * self.loss_weight * loss_bbox}
