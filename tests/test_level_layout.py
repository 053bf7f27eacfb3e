"""LevelLayout (built once per forward, passed to every attention layer) and the explicit
attention backends of MultiScaleDeformableAttention."""
import pytest
import torch

from detrex_lite.layers import LevelLayout, MultiScaleDeformableAttention, attention_backend
from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch, ms_deform_attn_with_layout

from test_ms_deform_attn import make_inputs

needs_ext = pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")


def test_from_sizes_and_from_features():
    layout = LevelLayout.from_sizes([(6, 4), (3, 5)], torch.device("cpu"))
    assert layout.sizes == ((6, 4), (3, 5))
    assert layout.spatial_shapes.dtype == layout.level_start_index.dtype == torch.int64
    assert layout.spatial_shapes.tolist() == [[6, 4], [3, 5]] and layout.level_start_index.tolist() == [0, 24]
    maps = [torch.zeros(2, 3, 6, 4), torch.zeros(2, 3, 3, 5)]
    from_maps = LevelLayout.from_features(maps)
    assert from_maps.sizes == layout.sizes
    assert torch.equal(from_maps.spatial_shapes, layout.spatial_shapes)
    assert torch.equal(from_maps.level_start_index, layout.level_start_index)
    with pytest.raises(Exception):  # frozen: a layout is never modified
        layout.sizes = ((1, 1),)


@pytest.mark.parametrize("sizes", [[], [(4, 0)], [(-1, 3), (2, 2)], [("a", 2)]])
def test_from_sizes_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="LevelLayout: sizes"):
        LevelLayout.from_sizes(sizes, torch.device("cpu"))


def test_from_tensors_reads_and_checks():
    layout = LevelLayout.from_tensors(torch.tensor([[6, 4], [3, 5]]), torch.tensor([0, 24]))
    assert layout.sizes == ((6, 4), (3, 5))
    with pytest.raises(ValueError, match="level_start_index must be the level offsets"):
        LevelLayout.from_tensors(torch.tensor([[6, 4], [3, 5]]), torch.tensor([0, 25]))
    with pytest.raises(ValueError, match="positive"):
        LevelLayout.from_tensors(torch.tensor([[6, 0], [3, 5]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="int64"):
        LevelLayout.from_tensors(torch.tensor([[6, 4]], dtype=torch.int32), torch.tensor([0]))


def test_stale_layout_after_in_place_edit_is_an_error_not_garbage():
    """The issue's reproduction: under inference_mode (tensors without a version counter) a call
    with a valid layout, then an in-place edit of spatial_shapes, then the same call. The op
    used to remember the first layout by the tensor's identity and ran the kernel on it (a
    segfault or ~1e28 garbage); it must read the tensor again and refuse it."""
    value, shapes, starts, loc, attn = make_inputs()  # levels (6, 4), (3, 5): S = 39
    with torch.inference_mode():
        shapes, starts = shapes.clone(), starts.clone()
        first = ms_deform_attn(value, shapes, starts, loc, attn)
        assert torch.isfinite(first).all()
        shapes[1, 1] = 50  # now claims 24 + 150 positions; value has 39
        with pytest.raises(ValueError, match="spatial_shapes"):
            ms_deform_attn(value, shapes, starts, loc, attn)
        shapes[1, 1] = 5
        starts[1] = 30  # a level offset that no longer matches the shapes
        with pytest.raises(ValueError, match="level_start_index"):
            ms_deform_attn(value, shapes, starts, loc, attn)


def test_trusted_layout_reads_nothing_back_and_matches_the_public_op(monkeypatch):
    """The module's entry takes the host-side sizes from the layout: no tolist/item (each a GPU
    synchronisation), same result as the public op on raw tensors."""
    value, shapes, starts, loc, attn = make_inputs()
    layout = LevelLayout.from_sizes([(6, 4), (3, 5)], value.device)
    expected = ms_deform_attn(value, shapes, starts, loc, attn)
    reads = []
    original = torch.Tensor.tolist

    def tolist(self):
        reads.append(tuple(self.shape))
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    for backend in ("auto", "pytorch"):
        got = ms_deform_attn_with_layout(value, layout, loc, attn, backend=backend)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert reads == []
    # S that disagrees with the layout is still caught (from the host-side sizes).
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_with_layout(value[:, 1:], layout, loc, attn)
    with pytest.raises(ValueError, match="backend"):
        ms_deform_attn_with_layout(value, layout, loc, attn, backend="cuda")


def test_compiled_backend_without_kernel_is_an_error():
    value, _, _, loc, attn = make_inputs()
    layout = LevelLayout.from_sizes([(6, 4), (3, 5)], value.device)
    not_built = msda.OpExtension(None)  # injected: a build without the extension
    with pytest.raises(RuntimeError, match="backend='compiled'"):
        ms_deform_attn_with_layout(value, layout, loc, attn, backend="compiled", extension=not_built)
    with pytest.warns(RuntimeWarning, match="falls back"):
        ms_deform_attn_with_layout(value, layout, loc, attn, backend="auto", extension=not_built)


def _module_call(attn, layout=None, raw=None):
    g = torch.Generator().manual_seed(0)
    query, value, refs = torch.randn(1, 5, 16, generator=g), torch.randn(1, 30, 16, generator=g), torch.rand(1, 5, 2, 2, generator=g)
    if layout is not None:
        return attn(query, value=value, reference_points=refs, layout=layout)
    return attn(query, value=value, reference_points=refs, spatial_shapes=raw[0], level_start_index=raw[1])


def test_module_backends_and_context_manager():
    model = torch.nn.Sequential(
        MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2),
        MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2, backend="pytorch"),
    ).eval()
    layout = LevelLayout.from_sizes([(4, 6), (2, 3)], torch.device("cpu"))
    raw = (torch.tensor([[4, 6], [2, 3]]), torch.tensor([0, 24]))
    with torch.no_grad():
        auto = _module_call(model[0], layout)
        # Raw tensors (the official module's arguments) give the same result.
        torch.testing.assert_close(_module_call(model[0], raw=raw), auto)
        with attention_backend(model, "pytorch"):
            assert [m.backend for m in model] == ["pytorch", "pytorch"]
            reference = _module_call(model[0], layout)
        assert [m.backend for m in model] == ["auto", "pytorch"]  # restored, each its own
        torch.testing.assert_close(reference, auto, atol=1e-5, rtol=1e-5)
        with pytest.raises(KeyError):
            with attention_backend(model, "compiled"):
                raise KeyError("inside")
        assert [m.backend for m in model] == ["auto", "pytorch"]  # restored after an exception
    with pytest.raises(ValueError, match="backend"):
        MultiScaleDeformableAttention(embed_dim=16, num_heads=2, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        with attention_backend(model, "fast"):
            pass
    with pytest.raises(ValueError, match="layout"):
        model[0](torch.zeros(1, 5, 16), value=torch.zeros(1, 30, 16), reference_points=torch.zeros(1, 5, 2, 2))


@needs_ext
def test_backend_decides_what_a_trace_records():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2).eval()
    layout = LevelLayout.from_sizes([(4, 6), (2, 3)], torch.device("cpu"))

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, q, v, r):
            return self.attn(q, value=v, reference_points=r, layout=layout)

    args = (torch.randn(1, 5, 16), torch.randn(1, 30, 16), torch.rand(1, 5, 2, 2))
    for backend, kind in (("compiled", "detrex_lite::ms_deform_attn_forward"), ("pytorch", "aten::grid_sampler")):
        with attention_backend(attn, backend):
            traced = torch.jit.trace(Call(), args, check_trace=False)
        assert kind in {node.kind() for node in traced.inlined_graph.nodes()}


def test_reference_matches_public_reference():
    value, shapes, _, loc, attn = make_inputs(dtype=torch.float64)
    layout = LevelLayout.from_tensors(shapes, torch.tensor([0, 24]))
    torch.testing.assert_close(
        ms_deform_attn_with_layout(value, layout, loc, attn, backend="pytorch"),
        ms_deform_attn_pytorch(value, shapes, loc, attn),
    )
