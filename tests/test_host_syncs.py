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

The other way round, a host-to-device copy that is not ``non_blocking`` from pinned memory
waits for the stream too. The level layout reaches the device in one non-blocking copy from
pinned memory (checked on the CPU with the "meta" device, which records the copies the same
code issues), and on a GPU the attention path runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""
import collections
import os
import traceback

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from torch.utils._python_dispatch import TorchDispatchMode

from detrex_lite.layers import LevelLayout
from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.level_layout import host_layout
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


class HostToDeviceCopies(TorchDispatchMode):
    """Copies from a CPU tensor to another device, by (site, blocking)."""

    def __init__(self):
        super().__init__()
        self.copies = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            source, target, non_blocking = args[0], kwargs.get("device"), kwargs.get("non_blocking", False)
        elif func is torch.ops.aten.copy_.default:
            source, target = args[1], args[0].device
            non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        else:
            source = target = None
        if source is not None and target is not None and source.device.type == "cpu" and torch.device(target).type != "cpu":
            self.copies[(_site(traceback.extract_stack()), not non_blocking)] += 1
        return func(*args, **kwargs)


LEVELS = [(25, 42), (13, 21), (7, 11), (4, 6)]


def test_level_layout_reaches_the_device_in_one_non_blocking_copy():
    recorder = HostToDeviceCopies()
    with recorder:
        layout = LevelLayout.from_sizes(LEVELS, torch.device("meta"))
    assert dict(recorder.copies) == {(("detrex_lite/layers/level_layout.py", "from_sizes"), False): 1}
    assert layout.spatial_shapes.shape == (4, 2) and layout.level_start_index.shape == (4,)
    assert layout.spatial_shapes.device.type == layout.level_start_index.device.type == "meta"
    # What was copied: both tensors in one host buffer.
    packed = host_layout(LEVELS)
    assert packed.tolist() == [25, 42, 13, 21, 7, 11, 4, 6, 0, 1050, 1323, 1400]


def test_trusted_layout_for_the_operator_is_host_side():
    """What the model's path hands the compiled operator for a GPU value: the host-side sizes
    (checked on the host, copied by the operator without waiting), not a read-back."""
    layout = LevelLayout.from_sizes(LEVELS, torch.device("meta"))
    shapes, starts = msda._trusted_layout(torch.device("meta"), layout.sizes, layout.spatial_shapes,
                                          layout.level_start_index)
    assert shapes.device.type == starts.device.type == "cpu"
    assert shapes.tolist() == [list(hw) for hw in LEVELS] and starts.tolist() == [0, 1050, 1323, 1400]


needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and msda.extension_available("cuda")),
    reason="needs a CUDA GPU and detrex_lite._C built with CUDA",
)


def _attention_inputs(device):
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in LEVELS)
    value = torch.randn(2, s, 8, 32, generator=g).to(device).requires_grad_()
    loc = torch.rand(2, 100, 8, 4, 4, 2, generator=g).to(device).requires_grad_()
    attn = torch.rand(2, 100, 8, 4, 4, generator=g).to(device).requires_grad_()
    return value, loc, attn


@pytest.mark.cuda
@needs_cuda_kernels
def test_attention_path_on_cuda_neither_synchronises_nor_blocks():
    value, loc, attn = _attention_inputs("cuda")
    torch.cuda.synchronize()
    recorder = HostToDeviceCopies()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        with recorder:
            layout = LevelLayout.from_sizes(LEVELS, torch.device("cuda"))
            out = msda.ms_deform_attn_with_layout(value, layout, loc, attn, backend="compiled")
            torch.autograd.grad(out.square().sum(), (value, loc, attn))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    blocking = {site: n for (site, blocks), n in recorder.copies.items() if blocks}
    assert not blocking, f"blocking host-to-device copies: {blocking}"


@pytest.mark.cuda
@needs_cuda_kernels
def test_attention_path_under_cuda_graph_capture_replays_the_eager_result():
    """Inside a captured graph the layout is built by fill kernels and the operator gets it on
    the device (no host buffer to re-read at replay); a layout left on the CPU is refused."""
    value, loc, attn = (t.detach() for t in _attention_inputs("cuda"))
    eager = msda.ms_deform_attn_with_layout(value, LevelLayout.from_sizes(LEVELS, "cuda"), loc, attn)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture, as torch.cuda.graphs asks
        msda.ms_deform_attn_with_layout(value, LevelLayout.from_sizes(LEVELS, "cuda"), loc, attn)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = msda.ms_deform_attn_with_layout(value, LevelLayout.from_sizes(LEVELS, "cuda"), loc, attn)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, eager)
    cpu_layout = LevelLayout.from_sizes(LEVELS, "cpu")
    with pytest.raises(RuntimeError, match="under CUDA-graph capture the layout must already be on value's device"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            msda.ms_deform_attn_with_layout(value, cpu_layout, loc, attn)
