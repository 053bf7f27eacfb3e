"""Contrastive denoising (CDN) queries of DINO (Zhang et al. 2023, Sec. 3.3).

Every ground-truth box gives, in each of G groups, one *positive* query (its box moved by less
than lambda1 times its half size per corner, its label kept or flipped) that must reconstruct the
box and class, and one *negative* query (moved by between lambda1 and lambda2 = 2 * lambda1 half
sizes) that must predict "no object". The groups sit before the matching queries in the decoder;
an attention mask keeps the matching queries from seeing any denoising query and each group from
seeing the others, so the denoising task leaks nothing into inference.

Layout of the P = G * 2 * M denoising slots of one image (M = the most boxes of any image in the
batch): group g holds slots [2gM, 2gM + M) positives and [2gM + M, 2(g+1)M) negatives; slot
2gM + j (and 2gM + M + j) belongs to the image's box j. Slots of boxes an image does not have
are padding (zero content, box (0.5, 0.5, 0.5, 0.5), as the official code) and are targets of
"no object".
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from detrex_lite.utils.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

__all__ = [
    "DenoisingQueries",
    "build_denoising_queries",
    "denoising_attention_mask",
    "denoising_indices",
    "noise_boxes",
    "noise_labels",
    "num_denoising_groups",
]


class DenoisingQueries(NamedTuple):
    """The denoising part of the decoder input of one training batch.

    content: (B, P, C) label embeddings of the noised labels (zeros at padding slots).
    boxes: (B, P, 4) noised boxes, normalised (cx, cy, w, h) (0.5 at padding slots).
    attn_mask: (P + Q, P + Q) bool self-attention mask over [denoising | matching] queries,
        True = may not attend.
    labels: (B, P) int64 noised labels, -1 at padding slots.
    num_groups: G.
    max_boxes: M, the most boxes of one image in the batch (slots per half group).
    """

    content: torch.Tensor
    boxes: torch.Tensor
    attn_mask: torch.Tensor
    labels: torch.Tensor
    num_groups: int
    max_boxes: int

    @property
    def num_queries(self) -> int:
        """P = G * 2 * M."""
        return self.num_groups * 2 * self.max_boxes


def num_denoising_groups(dn_number: int, max_boxes: int) -> int:
    """G = dn_number // M, at least 1: about ``dn_number`` positive and as many negative queries
    per image whatever the box count (detrex's rule; the official code differs below 50)."""
    return max(1, dn_number // max_boxes)


def noise_labels(labels: torch.Tensor, label_noise_ratio: float, num_classes: int) -> torch.Tensor:
    """Label flipping of the official code: each label is replaced, with probability
    ``label_noise_ratio / 2``, by a class drawn uniformly from [0, num_classes) (so it may draw
    its own class again).

    Args:
        labels: (n,) int64.

    Returns:
        (n,) int64, a new tensor.
    """
    noised = labels.clone()
    if label_noise_ratio > 0 and len(labels):
        flip = torch.rand(labels.shape, device=labels.device) < label_noise_ratio * 0.5
        noised[flip] = torch.randint(0, num_classes, (int(flip.sum()),), device=labels.device)
    return noised


def noise_boxes(boxes: torch.Tensor, negative: torch.Tensor, box_noise_scale: float) -> torch.Tensor:
    """Moves each corner coordinate of each box by a random signed fraction of half its size
    (Sec. 3.3): positives by |delta| in [0, lambda1), negatives by [lambda1, 2 * lambda1), with
    lambda1 = ``box_noise_scale``; the result is clipped to the image.

    Args:
        boxes: (n, 4) normalised (cx, cy, w, h).
        negative: (n,) bool, which rows are negatives.
        box_noise_scale: lambda1.

    Returns:
        (n, 4) normalised (cx, cy, w, h).
    """
    if box_noise_scale <= 0 or not len(boxes):
        return boxes.clone()
    xyxy = box_cxcywh_to_xyxy(boxes)
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], -1) / 2  # (w/2, h/2, w/2, h/2)
    sign = torch.randint(0, 2, boxes.shape, device=boxes.device).to(boxes.dtype) * 2.0 - 1.0
    part = torch.rand(boxes.shape, device=boxes.device, dtype=boxes.dtype) + negative[:, None].to(boxes.dtype)
    xyxy = (xyxy + sign * part * half * box_noise_scale).clamp(0.0, 1.0)
    return box_xyxy_to_cxcywh(xyxy)


def denoising_attention_mask(num_groups: int, group_size: int, num_queries: int, device=None) -> torch.Tensor:
    """(P + Q, P + Q) bool mask, True = blocked, for P = num_groups * group_size denoising
    queries followed by Q matching queries: matching queries see only matching queries; a
    denoising query sees its own group and the matching queries."""
    num_dn = num_groups * group_size
    group = torch.arange(num_dn + num_queries, device=device) // group_size
    group[num_dn:] = -1  # the matching queries
    is_dn = group >= 0
    # query i may not attend key j when: i is matching and j is dn, or both dn in other groups
    return (~is_dn[:, None] & is_dn[None, :]) | (is_dn[:, None] & is_dn[None, :] & (group[:, None] != group[None, :]))


def build_denoising_queries(
    targets: Sequence[Dict[str, torch.Tensor]],
    *,
    dn_number: int,
    label_noise_ratio: float,
    box_noise_scale: float,
    num_classes: int,
    num_queries: int,
    label_enc: nn.Embedding,
) -> Optional[DenoisingQueries]:
    """The CDN queries of a training batch (module docstring for the layout).

    Args:
        targets: B dicts with "labels" (n_i,) int64 and "boxes" (n_i, 4) normalised cxcywh.
        dn_number: about how many positive (and as many negative) queries per image.
        label_noise_ratio: twice the probability of flipping a label (official convention).
        box_noise_scale: lambda1 (negatives between lambda1 and 2 * lambda1).
        num_classes: K, to draw flipped labels.
        num_queries: Q, the matching queries after the denoising ones (for the mask).
        label_enc: (K, C) embedding of the (noised) labels: the queries' content.

    Returns:
        None when ``dn_number <= 0``, else :class:`DenoisingQueries` (with no query when the
        batch has no box).
    """
    counts = [len(t["labels"]) for t in targets]
    max_boxes = max(counts, default=0)
    if dn_number <= 0:
        return None
    device = label_enc.weight.device
    bs, hidden = len(targets), label_enc.embedding_dim
    if max_boxes == 0:
        # No box in the batch: no denoising query, but label_enc stays in the graph (with a zero
        # gradient), so that distributed training, which expects every parameter to get a
        # gradient, does not stop on a batch of empty images, and the loss keys stay the same.
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return DenoisingQueries(
            label_enc(empty).view(bs, 0, hidden).expand(bs, 0, hidden), torch.zeros(bs, 0, 4, device=device),
            torch.zeros(num_queries, num_queries, dtype=torch.bool, device=device),
            torch.zeros(bs, 0, dtype=torch.int64, device=device), 1, 0,
        )
    num_groups = num_denoising_groups(dn_number, max_boxes)
    group_size = 2 * max_boxes
    num_dn = num_groups * group_size

    labels = torch.cat([t["labels"] for t in targets]).to(device)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.float32)
    batch_idx = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)]).to(device)
    box_idx = torch.cat([torch.arange(n) for n in counts]).to(device)
    n = len(labels)
    # One copy of every box per (group, positive/negative): copy c = 2g + (0 positive | 1 negative).
    copies = torch.arange(2 * num_groups, device=device).repeat_interleave(n)
    slots = copies * max_boxes + box_idx.repeat(2 * num_groups)
    rep_batch = batch_idx.repeat(2 * num_groups)
    noised_labels = noise_labels(labels.repeat(2 * num_groups), label_noise_ratio, num_classes)
    noised_boxes = noise_boxes(boxes.repeat(2 * num_groups, 1), (copies % 2) == 1, box_noise_scale)

    content = torch.zeros(bs, num_dn, hidden, device=device, dtype=label_enc.weight.dtype)
    content[rep_batch, slots] = label_enc(noised_labels)
    query_boxes = torch.full((bs, num_dn, 4), 0.5, device=device)
    query_boxes[rep_batch, slots] = noised_boxes
    query_labels = torch.full((bs, num_dn), -1, dtype=torch.int64, device=device)
    query_labels[rep_batch, slots] = noised_labels
    attn_mask = denoising_attention_mask(num_groups, group_size, num_queries, device)
    return DenoisingQueries(content, query_boxes, attn_mask, query_labels, num_groups, max_boxes)


def denoising_indices(targets: Sequence[Dict[str, torch.Tensor]], num_groups: int, max_boxes: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The known assignment of the positive denoising queries: per image (query_idx, target_idx)
    int64 CPU tensors, query 2gM + j -> box j for every group g (the criterion's index format)."""
    out = []
    for t in targets:
        n = len(t["labels"])
        box = torch.arange(n).repeat(num_groups)
        group = torch.arange(num_groups).repeat_interleave(n)
        out.append((group * 2 * max_boxes + box, box))
    return out
