"""Where a training step and an inference pass of Deformable DETR read device values on the host.

The model itself reads nothing back: the transformer builds spatial_shapes /
level_start_index from the feature maps' host-side sizes (``LevelLayout.from_features``), so the reference
points, proposals and the attention op's input checks need no read-back. Training reads the
matching cost (the Hungarian algorithm runs on the CPU); inference ends in detectron2's
``detector_postprocess``.

On a GPU each such read (``.item()``, ``bool(tensor)``, ``.tolist()``, boolean-mask indexing)
is a host-device synchronisation that drains the launch queue. This test records them on the
CPU (the same Python code runs) by function, and fails when one appears outside the known,
necessary places, e.g. a new ``assert (x >= 0).all()`` in the transformer or the losses.
"""
import collections
import os
import traceback

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from torch.utils._python_dispatch import TorchDispatchMode

from tools_tiny_models import tiny_deformable_detr_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ops whose result must reach the host (or whose output size depends on values).
SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}

# (file, function) -> why the read is needed. Files relative to the repository or detectron2.
ALLOWED = {
    ("detrex_lite/modeling/matcher.py", "forward"):
        "Hungarian assignment runs on the CPU: one cost transfer per stage, flags checked after it",
    ("detectron2/structures/image_list.py", "from_tensors"): "image sizes: CPU tensors on a GPU run",
    ("detectron2/structures/boxes.py", "clip"): "detector_postprocess, end of inference",
    ("detectron2/structures/boxes.py", "nonempty"): "detector_postprocess, end of inference",
    ("detectron2/modeling/postprocessing.py", "detector_postprocess"): "end of inference",
    ("detectron2/structures/instances.py", "__getitem__"): "detector_postprocess, end of inference",
}


def _site(stack):
    """The innermost frame in detrex_lite, projects/ or detectron2."""
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        if "/detectron2/" in path and "site-packages" in path:
            return "detectron2/" + path.split("/detectron2/", 1)[1], frame.name
        if path.startswith(REPO.replace(os.sep, "/") + "/") and "/tests/" not in path:
            rel = os.path.relpath(path, REPO).replace(os.sep, "/")
            if rel.startswith(("detrex_lite/", "projects/")):
                return rel, frame.name
    return "<elsewhere>", ""


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.sites[_site(traceback.extract_stack())] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def record_tolist(monkeypatch):
    """``Tensor.tolist`` reads data without dispatching an op: record it by hand."""
    sites = collections.Counter()
    original = torch.Tensor.tolist

    def tolist(self):
        sites[_site(traceback.extract_stack())] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return sites


def _batch(with_targets):
    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in ((96, 128), (80, 112)):
        item = {"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
        if with_targets:
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0]]))
            inst.gt_classes = torch.tensor([1, 3])
            item["instances"] = inst
        batch.append(item)
    return batch


def _unexpected(*counters):
    found = collections.Counter()
    for c in counters:
        found.update(c)
    return {site: n for site, n in found.items() if site not in ALLOWED}, found


@pytest.mark.parametrize("variant", ["box_refine", "two_stage"])
def test_training_step_reads_device_values_only_where_needed(variant, record_tolist):
    torch.manual_seed(0)
    model = instantiate(tiny_deformable_detr_config(variant).model).train()
    recorder = HostReads()
    with recorder:
        losses = model(_batch(with_targets=True))
        sum(losses.values()).backward()
    unexpected, found = _unexpected(recorder.sites, record_tolist)
    assert not unexpected, f"new host reads of device values (GPU synchronisations): {unexpected}"
    # Training needs the Hungarian matching on the CPU: one transfer per prediction stage (the
    # one decoder layer here, + the encoder proposals for two-stage); after it, two reads of the
    # host copies (the cost's isfinite check and the degenerate-box flags).
    stages = 2 if variant == "two_stage" else 1
    assert found[("detrex_lite/modeling/matcher.py", "forward")] == 2 * stages


@pytest.mark.parametrize("variant", ["one_stage", "two_stage"])
def test_inference_reads_device_values_only_where_needed(variant, record_tolist):
    torch.manual_seed(0)
    model = instantiate(tiny_deformable_detr_config(variant).model).eval()
    recorder = HostReads()
    with torch.no_grad(), recorder:
        model(_batch(with_targets=False))
    unexpected, _ = _unexpected(recorder.sites, record_tolist)
    assert not unexpected, f"new host reads of device values (GPU synchronisations): {unexpected}"
