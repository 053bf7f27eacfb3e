"""ms_deform_attn's contract: input validation, the fallback without _C, torch.compile, fake
tensors and autocast."""
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from detrex_lite.layers import ms_deform_attn_function as msda
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn, ms_deform_attn_pytorch

from test_ms_deform_attn import make_inputs

needs_ext = pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")


def _bad_inputs():
    """(argument expected in the message, the five tensors with that argument broken)."""
    v, s, i, l, a = make_inputs(dtype=torch.float32)  # N=2, S=39, M=2, D=4, Lq=5, L=2, P=2
    return [
        ("value", (v[0], s, i, l, a)),  # rank 3
        ("spatial_shapes", (v, s.flatten(), i, l, a)),
        ("spatial_shapes", (v, s.int(), i, l, a)),
        ("level_start_index", (v, s, i.int(), l, a)),
        ("level_start_index", (v, s, i[:1], l, a)),
        ("level_start_index", (v, s, i + 1, l, a)),  # inconsistent with spatial_shapes
        ("spatial_shapes", (v[:, :-1], s, i, l, a)),  # sum(H*W) != S
        ("spatial_shapes", (v, s * torch.tensor([[1, 0]]), i, l, a)),  # zero width
        ("sampling_locations", (v, s, i, l[:1], a)),  # N mismatch
        ("sampling_locations", (v, s, i, l[:, :, :1], a)),  # M mismatch
        ("sampling_locations", (v, s, i, l[:, :, :, :1], a)),  # L mismatch
        ("sampling_locations", (v, s, i, l[..., :1], a)),  # not (x, y)
        ("attention_weights", (v, s, i, l, a[..., :1])),  # P mismatch
        ("attention_weights", (v, s, i, l, a[:, :2])),  # Lq mismatch
        ("sampling_locations", (v, s, i, l.double(), a)),  # dtype mismatch
        ("attention_weights", (v, s, i, l, a.half())),
        ("sampling_locations", (v, s, i, l.half(), a)),  # 16-bit locations need a 16-bit value
        ("attention_weights", (v.double(), s, i, l.double(), a)),  # float32 only next to half value
        ("sampling_locations", (v.half(), s, i, l.bfloat16(), a)),
        ("attention_weights", (v.bfloat16(), s, i, l, a.double())),
        ("value", (v.long(), s, i, l, a)),
        ("value", (v.to(torch.float8_e4m3fn), s, i, l, a)),
        ("sampling_locations", (v, s, i, l.to("meta"), a)),  # device mismatch
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_bad_input_raises_value_error_naming_argument(index):
    argument, tensors = _bad_inputs()[index]
    with pytest.raises(ValueError, match=argument):
        ms_deform_attn(*tensors)


# Every tensor argument of the operators (their names), moved alone to another device.
OP_ARGUMENTS = ("value", "spatial_shapes", "level_start_index", "sampling_loc", "attn_weight", "grad_output")
PUBLIC_NAMES = {"sampling_loc": "sampling_locations", "attn_weight": "attention_weights"}


@pytest.mark.parametrize("argument", OP_ARGUMENTS)
def test_an_argument_on_the_meta_device_is_an_error_never_uninitialised_memory(argument):
    """One tensor on the meta device and the rest on the CPU. The dispatcher sends a call with
    any meta tensor to the fake kernel, which used to return ``empty`` CPU memory
    ([3.4e38, 4.6e-41, ...]) with no error, for the forward and the backward op alike. Now the
    operators raise RuntimeError naming the argument and both devices, and the public entry a
    ValueError naming it, before any kernel runs. (A CUDA tensor next to CPU ones reaches the
    C++ device check of the CUDA kernels instead.)"""
    device = "meta"
    v, s, i, l, a = make_inputs(dtype=torch.float32)
    tensors = dict(value=v, spatial_shapes=s, level_start_index=i, sampling_loc=l, attn_weight=a,
                   grad_output=torch.ones(2, 5, 8))
    tensors[argument] = tensors[argument].to(device)
    # value moved: the first tensor left on the CPU is the one that disagrees with it
    named = "sampling_loc" if argument == "value" else argument
    at, other = ("cpu", device) if argument == "value" else (device, "cpu")
    expected = f"{named} is on {at}.* but value is on {other}"
    forward_args = [tensors[name] for name in OP_ARGUMENTS[:5]]
    calls = {"ms_deform_attn_backward": lambda: torch.ops.detrex_lite.ms_deform_attn_backward(*forward_args, tensors["grad_output"], 64)}
    if argument != "grad_output":
        calls["ms_deform_attn_forward"] = lambda: torch.ops.detrex_lite.ms_deform_attn_forward(*forward_args, 64)
    if msda.extension_available("cpu"):
        for op, call in calls.items():
            with pytest.raises(RuntimeError, match=f"{op}: {expected}"):
                call()
    if argument != "grad_output":
        public = PUBLIC_NAMES.get(named, named)
        with pytest.raises(ValueError, match=f"ms_deform_attn: {public} must be on"):
            ms_deform_attn(*forward_args)


@needs_ext
def test_all_on_the_meta_device_still_gives_shapes():
    """Every argument on the meta device is the legitimate shape-only call: meta outputs."""
    v, s, i, l, a = (t.to("meta") for t in make_inputs(dtype=torch.float32))
    out = torch.ops.detrex_lite.ms_deform_attn_forward(v, s, i, l, a, 64)
    grads = torch.ops.detrex_lite.ms_deform_attn_backward(v, s, i, l, a, out, 64)
    assert out.device.type == "meta" and out.shape == (2, 5, 8)
    assert [(g.device.type, g.shape) for g in grads] == [("meta", v.shape), ("meta", l.shape), ("meta", a.shape)]
    with pytest.raises(ValueError, match="ms_deform_attn: spatial_shapes is on the meta device: it holds no values"):
        ms_deform_attn(v, s, i, l, a)


FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _allowed(value_dtype, dtype):
    """The dtype contract for sampling locations and attention weights (docs/ops.md)."""
    return dtype == value_dtype or (value_dtype in (torch.float16, torch.bfloat16) and dtype == torch.float32)


@pytest.mark.parametrize("value_dtype", FLOAT_DTYPES)
def test_dtype_contract_in_python(value_dtype):
    """Every (locations, weights) dtype pair next to each value dtype: accepted exactly when the
    contract allows it, else a ValueError naming the first argument at fault."""
    v, s, i, l, a = make_inputs()
    for loc_dtype in FLOAT_DTYPES:
        for attn_dtype in FLOAT_DTYPES:
            args = (v.to(value_dtype), s, i, l.to(loc_dtype), a.to(attn_dtype))
            if not _allowed(value_dtype, loc_dtype):
                with pytest.raises(ValueError, match="sampling_locations must be .* for value of dtype"):
                    ms_deform_attn(*args)
            elif not _allowed(value_dtype, attn_dtype):
                with pytest.raises(ValueError, match="attention_weights must be .* for value of dtype"):
                    ms_deform_attn(*args)
            else:
                assert ms_deform_attn(*args).dtype == value_dtype


@needs_ext
@pytest.mark.parametrize("value_dtype", FLOAT_DTYPES)
def test_dtype_contract_of_the_compiled_ops(value_dtype):
    """The operators called directly: the C++ check raises RuntimeError naming the argument;
    allowed inputs give the output and grad_value in value's dtype and each other gradient in
    its input's dtype. The CPU kernel computes in float32 (float64 for float64), so the results
    equal the float32 (float64) results cast to those dtypes."""
    v, s, i, l, a = make_inputs()
    forward, backward = torch.ops.detrex_lite.ms_deform_attn_forward, torch.ops.detrex_lite.ms_deform_attn_backward
    compute = torch.float64 if value_dtype == torch.float64 else torch.float32
    for loc_dtype in FLOAT_DTYPES:
        for attn_dtype in FLOAT_DTYPES:
            value, loc, attn = v.to(value_dtype), l.to(loc_dtype), a.to(attn_dtype)
            grad_out = torch.ones(2, 5, 8, dtype=value_dtype)
            bad = [name for name, dtype in (("sampling_loc", loc_dtype), ("attn_weight", attn_dtype))
                   if not _allowed(value_dtype, dtype)]
            if bad:
                for call in (lambda: forward(value, s, i, loc, attn, 64),
                             lambda: backward(value, s, i, loc, attn, grad_out, 64)):
                    with pytest.raises(RuntimeError, match=f"{bad[0]} must be .* for value of dtype"):
                        call()
                continue
            out = forward(value, s, i, loc, attn, 64)
            grads = backward(value, s, i, loc, attn, grad_out, 64)
            assert [out.dtype] + [g.dtype for g in grads] == [value_dtype, value_dtype, loc_dtype, attn_dtype]
            upcast = [t.to(compute) for t in (value, loc, attn)]
            expected_out = forward(upcast[0], s, i, upcast[1], upcast[2], 64)
            expected_grads = backward(upcast[0], s, i, upcast[1], upcast[2], grad_out.to(compute), 64)
            torch.testing.assert_close(out, expected_out.to(value_dtype), rtol=0, atol=0)
            for g, e in zip(grads, expected_grads):
                torch.testing.assert_close(g, e.to(g.dtype), rtol=0, atol=0)


@needs_ext
def test_compiled_ops_reject_bad_value_and_grad_output_dtypes():
    v, s, i, l, a = make_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="value must be float64, float32, float16 or bfloat16, got int64"):
        torch.ops.detrex_lite.ms_deform_attn_forward(v.long(), s, i, l, a, 64)
    with pytest.raises(RuntimeError, match="grad_output must be .* of value's dtype bfloat16"):
        torch.ops.detrex_lite.ms_deform_attn_backward(v.bfloat16(), s, i, l, a, torch.ones(2, 5, 8), 64)


def test_bad_im2col_step():
    with pytest.raises(ValueError, match="im2col_step"):
        ms_deform_attn(*make_inputs(), im2col_step=0)


def test_fallback_without_extension_warns_once():
    inputs = make_inputs()
    not_built = msda.OpExtension(None)  # injected: a build without the extension
    assert not msda.extension_available("cpu", not_built)
    assert msda.extension_info(not_built) == {"built": False, "with_cuda": False, "cuda_archs": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ms_deform_attn(*inputs, extension=not_built)
        out2 = ms_deform_attn(*inputs, extension=not_built)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "not built" in messages[0] and "pip install" in messages[0]
    value, shapes, _, loc, attn = inputs
    expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(out2, expected, rtol=0, atol=0)


def test_module_runs_without_extension(monkeypatch):
    from detrex_lite.layers import MultiScaleDeformableAttention

    not_built = msda.OpExtension(None)
    not_built.warned = True  # already warned: stays quiet
    attn = MultiScaleDeformableAttention(
        embed_dim=16, num_heads=2, num_levels=2, num_points=2, dropout=0.0, extension=not_built
    )
    _, shapes, starts, _, _ = make_inputs()
    query = torch.randn(2, 5, 16)
    value = torch.randn(2, 39, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attn(query, value=value, reference_points=torch.rand(2, 5, 2, 2), spatial_shapes=shapes,
                   level_start_index=starts)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()


def test_fallback_without_extension_accepts_mixed_dtypes(monkeypatch):
    """The reference needs one dtype (grid_sample): the fallback computes a half value with
    float32 locations and weights in float32 and returns value's dtype."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    not_built = msda.OpExtension(None)
    not_built.warned = True
    out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn, extension=not_built)
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_pytorch(value.bfloat16().float(), shapes, loc, attn).bfloat16()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize(
    "dtypes",
    [(torch.float32,) * 3, (torch.float64,) * 3, (torch.bfloat16, torch.float32, torch.float32),
     (torch.float16, torch.float16, torch.float32)],
    ids=["float32", "float64", "bf16_value", "f16_value_f32_weights"],
)
def test_fake_tensor_shapes(dtypes):
    value, shapes, starts, loc, attn = make_inputs(queries=7)
    value, loc, attn = (t.to(dtype) for t, dtype in zip((value, loc, attn), dtypes))
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (value, shapes, starts, loc, attn)]
        out = torch.ops.detrex_lite.ms_deform_attn_forward(*fake, 64)
        grads = torch.ops.detrex_lite.ms_deform_attn_backward(*fake, out, 64)
    assert out.shape == (2, 7, 8) and out.dtype == value.dtype
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert [g.dtype for g in grads] == list(dtypes)


@needs_ext
@pytest.mark.parametrize("backend,fullgraph", [("eager", True), ("aot_eager", True)])
def test_torch_compile(backend, fullgraph):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)

    def fn(v, l, a):
        return (ms_deform_attn(v, shapes, starts, l, a) * 2).sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=fullgraph)
    leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    out = compiled(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, attn)]
    ref = (ms_deform_attn_pytorch(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2]) * 2).sum(-1)
    ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


class _ExtensionWithCuda:
    """Stands in for a detrex_lite._C built with CUDA kernels. Its functions are marked as
    skipped for dynamo, as the real (pybind11) ones are: a call to them from a function traced
    with fullgraph=True fails with "Attempted to call function marked as skipped"."""

    with_cuda = staticmethod(torch._dynamo.disable(lambda: True))
    cuda_archs = staticmethod(torch._dynamo.disable(lambda: "sm_90"))


@needs_ext
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_makes_no_call_into_the_extension(monkeypatch, backend):
    """The CUDA branch of extension_available (forced on here with a fake CUDA build) and the
    whole ms_deform_attn path trace without calling into _C: availability is a plain value read
    at import. A GPU would hit the same path (tests/test_ms_deform_attn_cuda.py::test_cuda_compile)."""
    fake = msda.OpExtension(_ExtensionWithCuda())  # injected: a CUDA build
    assert msda.extension_available("cuda", fake) and msda.extension_info(fake)["cuda_archs"] == ["sm_90"]
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)

    def fn(v, l, a):
        out = ms_deform_attn(v, shapes, starts, l, a, extension=fake)
        return out * 2 if msda.extension_available("cuda", fake) else out

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(value, loc, attn), 2 * ms_deform_attn_pytorch(value, shapes, loc, attn))
    torch._dynamo.reset()


@needs_ext
def test_autocast_cpu_bfloat16_runs_in_float32():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    expected = ms_deform_attn_pytorch(value, shapes, loc, attn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Mixed dtypes as a model under autocast produces them: bf16 value, fp32 locations.
        out = ms_deform_attn(value.bfloat16(), shapes, starts, loc, attn)
        # Direct calls go through the operator's AutocastCPU kernel: this mix (bf16 locations
        # next to a float32 value) is outside the contract, yet valid under autocast.
        direct = torch.ops.detrex_lite.ms_deform_attn_forward(value, shapes, starts, loc.bfloat16(), attn, 64)
    assert out.dtype == torch.float32 and direct.dtype == torch.float32
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value.bfloat16().float(), shapes, loc, attn))
    # The AutocastCPU kernel upcast the bf16 locations back to float32 before the kernel.
    torch.testing.assert_close(direct, ms_deform_attn_pytorch(value, shapes, loc.bfloat16().float(), attn))
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)


@needs_ext
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_under_cpu_autocast(backend):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), backend=backend, fullgraph=True)
    leaves = [value.bfloat16().requires_grad_(), loc.clone().requires_grad_(), attn.clone().requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves)
    assert out.dtype == torch.float32 and [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value.bfloat16().float(), shapes, loc, attn))


class _RecordOpDtypes(TorchDispatchMode):
    """Records the dtypes that reach the forward operator's kernels (below the autocast keys)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.detrex_lite.ms_deform_attn_forward.default:
            self.seen.append([a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()])
        return func(*args, **(kwargs or {}))


@needs_ext
@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_rule_without_a_gpu(autocast_dtype):
    """CPU twin of the CUDA autocast tests: the AutocastCUDA kernel of the forward operator on
    fake CUDA tensors (no GPU needed). Value goes to the autocast dtype, locations and weights
    to float32, whatever they came in as; the fake kernel gives the output dtype."""
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    with FakeTensorMode() as mode:
        value, shapes, starts, loc, attn = (
            mode.from_tensor(t).to("cuda") for t in (value, shapes, starts, loc, attn)
        )
        recorder = _RecordOpDtypes()
        # torch.autocast("cuda") switches itself off without a GPU: set the state directly.
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", autocast_dtype)
        try:
            with recorder:
                out = torch.ops.detrex_lite.ms_deform_attn_forward(
                    value, shapes, starts, loc.bfloat16(), attn.half(), 64
                )
        finally:
            torch.set_autocast_enabled("cuda", enabled)
            torch.set_autocast_dtype("cuda", dtype)
    assert recorder.seen == [[autocast_dtype, torch.float32, torch.float32]]
    assert out.dtype == autocast_dtype and out.device.type == "cuda"


def test_autocast_input_rule():
    """The rule ms_deform_attn applies itself before calling the operator (or the fallback)."""
    value, _, _, loc, attn = make_inputs(dtype=torch.float16)
    dtype = torch.get_autocast_dtype("cuda")
    try:
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        cast = msda._autocast_inputs("cuda", value.float(), loc, attn.bfloat16())
        kept = msda._autocast_inputs("cuda", value.double(), loc, attn)
    finally:
        torch.set_autocast_dtype("cuda", dtype)
    assert [t.dtype for t in cast] == [torch.bfloat16, torch.float32, torch.float32]
    assert [t.dtype for t in msda._autocast_inputs("cpu", value, loc, attn)] == [torch.float32] * 3
    # float64 stays float64, as autocast leaves float64 tensors alone in its own ops.
    assert [t.dtype for t in kept] == [torch.float64] * 3


def test_layout_check_under_inference_mode():
    """Inference tensors have no version counter: cached by identity, still checked first."""
    value, shapes, starts, loc, attn = make_inputs()
    with torch.inference_mode():
        bad_starts = starts.clone() + 1
        with pytest.raises(ValueError, match="level_start_index"):
            ms_deform_attn(value, shapes.clone(), bad_starts, loc, attn)
        good_shapes, good_starts = shapes.clone(), starts.clone()
        out = ms_deform_attn(value, good_shapes, good_starts, loc, attn)
        torch.testing.assert_close(ms_deform_attn(value, good_shapes, good_starts, loc, attn), out)


