"""tools/benchmark_ops.py (detrex_lite.layers.ops_benchmark): the bytes-moved floor, the input
generators (realistic, uniform, out-of-bounds) and the JSON it writes, checked on CPU."""
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn_pytorch
from detrex_lite.layers import ops_benchmark
from detrex_lite.layers import ops_benchmark_inputs as bench


def test_bytes_moved_matches_hand_count():
    # One 2x3 map, N=M=P=1, D=4, float32, two queries: the first sits on pixel (0, 0)'s centre
    # plus a small shift (corners (0,0) (1,0) (0,1) (1,1) = rows 0, 1, 3, 4), the second lies
    # left of the map (no corner inside).
    value = torch.zeros(1, 6, 1, 4)
    shapes = torch.tensor([[2, 3]])
    starts = torch.tensor([0])
    loc = torch.tensor([[0.5 / 3 + 0.01, 0.5 / 2 + 0.01], [-1.0, 0.3]]).view(1, 2, 1, 1, 1, 2)
    rows = bench.touched_value_rows(value, shapes, starts, loc)
    assert rows == 4
    nbytes = bench.bytes_moved(value, loc, rows)
    # forward: locations 2*2*4 + weights 2*4 + output 2*4*4 + value rows 4*4*4 = 16 + 8 + 32 + 64
    assert nbytes["forward"] == 120
    # backward: grad_out 32 + locations 16 + weights 8 + value rows 64 + grad_locations 16
    # + grad_weights 8 + all of grad_value 6*4*4 = 96
    assert nbytes["backward"] == 240
    assert nbytes["forward_backward"] == 360
    assert bench.bytes_moved(value.half(), loc.half(), rows)["forward"] == 60
    # The native operator's mixed-precision inputs: float16 value (output, grad_output and
    # grad_value), float32 locations and weights (and their gradients): 12 bytes per sample.
    mixed = bench.bytes_moved(value.half(), loc, rows, weights=torch.zeros(1, 2, 1, 1, 1))
    # forward: output 2*4*2 + value rows 4*4*2 + samples 2*12 = 16 + 32 + 24
    assert mixed["forward"] == 72
    # backward: grad_out 16 + value rows 32 + grad_value 6*4*2 = 48 + samples read and written 2*2*12
    assert mixed["backward"] == 144


def test_input_dtypes_of_each_implementation():
    half = {"value": torch.bfloat16, "sampling_locations": torch.float32, "attention_weights": torch.float32}
    assert bench.input_dtypes("native", torch.bfloat16) == half
    assert bench.input_dtypes("native", torch.float16) == dict(half, value=torch.float16)
    assert bench.input_dtypes("reference", torch.bfloat16) == dict.fromkeys(half, torch.bfloat16)
    for impl in ("native", "reference"):
        assert bench.input_dtypes(impl, torch.float64) == dict.fromkeys(half, torch.float64)
    inputs = bench.make_inputs("tiny", "cpu", torch.float32)
    cast = bench.cast_inputs(inputs, half)
    assert [t.dtype for t in cast] == [torch.bfloat16, torch.int64, torch.int64, torch.float32, torch.float32]
    assert cast[3] is inputs[3]  # no copy when the dtype is already right


def test_touched_rows_are_the_rows_that_get_a_gradient():
    value, shapes, starts, loc, weights = bench.make_inputs("tiny", "cpu", torch.float64)
    value.requires_grad_()
    out = ms_deform_attn_pytorch(value, shapes, loc, weights)
    (grad_value,) = torch.autograd.grad(out, value, torch.randn_like(out))
    with_grad = int((grad_value.abs().sum(-1) > 0).sum())  # (N, S, M) rows
    assert bench.touched_value_rows(value, shapes, starts, loc) == with_grad
    assert 0 < with_grad < value.shape[0] * value.shape[1] * value.shape[2]


def _grid_sample_out_of_bounds(loc, levels):
    """Independent of the tool: a sample is out of bounds when grid_sample of a map of ones is 0."""
    fractions = []
    for lvl, (h, w) in enumerate(levels):
        grid = 2 * loc[:, :, :, lvl].reshape(1, -1, 1, 2).double() - 1
        ones = torch.ones(1, 1, h, w, dtype=torch.float64)
        sampled = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        fractions.append(sampled.flatten() == 0)
    return torch.cat(fractions).double().mean().item()


def test_out_of_bounds_row_moves_ten_percent_outside():
    levels = bench.SHAPES["R_oob10"].levels
    *_, loc_oob, w_oob = bench.make_inputs("R_oob10", "cpu", torch.float32)
    *_, loc_e1, _ = bench.make_inputs("E1", "cpu", torch.float32)
    assert loc_oob.shape == loc_e1.shape
    natural = _grid_sample_out_of_bounds(loc_e1, levels)
    assert 0.05 < natural < 0.12  # realistic offsets leave the small maps near their borders
    assert _grid_sample_out_of_bounds(loc_oob, levels) == pytest.approx(natural + 0.10, abs=1e-5)
    assert bench.out_of_bounds_mask(loc_oob, levels).double().mean().item() == pytest.approx(natural + 0.10, abs=1e-5)
    # Only the pushed samples moved, and they were inside before.
    moved = (loc_oob != loc_e1).any(-1)
    assert moved.double().mean().item() == pytest.approx(0.10, abs=1e-6)
    assert not bench.out_of_bounds_mask(loc_e1, levels)[moved].any()
    torch.testing.assert_close(w_oob.sum((-1, -2)), torch.ones(w_oob.shape[:3]))


def test_uniform_locations_cover_the_unit_square():
    *_, loc, _ = bench.make_inputs("R_uniform", "cpu", torch.float32)
    assert loc.min() >= 0 and loc.max() <= 1
    assert loc.min() < 1e-4 and loc.max() > 1 - 1e-4
    counts = torch.histc(loc.flatten(), bins=10, min=0, max=1) / loc.numel()
    torch.testing.assert_close(counts, torch.full((10,), 0.1), atol=2e-3, rtol=0)


def test_realistic_locations_follow_the_initial_offset_ring():
    shape = bench.SHAPES["E2"]
    value, shapes, _, loc, weights = bench.make_inputs("E2", "cpu", torch.float64)
    ref = []
    for h, w in shape.levels:  # pixel centres, x then y
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        ref.append(torch.stack([xs, ys], -1).reshape(-1, 2))
    ref = torch.cat(ref).double()
    wh = torch.tensor([[w, h] for h, w in shape.levels], dtype=torch.float64)
    pixels = (loc - ref[None, :, None, None, None, :]) * wh[None, None, None, :, None, :]  # (N,Lq,M,L,P,2)
    mean, std = pixels.mean((0, 1)), pixels.std((0, 1))
    for m in range(shape.num_heads):
        direction = torch.tensor([math.cos(2 * math.pi * m / 8), math.sin(2 * math.pi * m / 8)], dtype=torch.float64)
        direction = direction / direction.abs().max()
        for p in range(shape.num_points):
            torch.testing.assert_close(mean[m, :, p], (p + 1) * direction.expand(4, 2), atol=0.02, rtol=0)
    torch.testing.assert_close(std, torch.full_like(std, 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(weights.shape[:3], dtype=torch.float64))


@pytest.mark.parametrize("name,head_dim,points", [("R_D64", 64, 4), ("R_P8", 32, 8), ("R_D48", 48, 4)])
def test_robustness_shapes(name, head_dim, points):
    value, shapes, starts, loc, weights = bench.make_inputs(name, "cpu", torch.float32)
    assert value.shape == (2, 22223, 8, head_dim)
    assert loc.shape == (2, 22223, 8, 4, points, 2) and weights.shape == (2, 22223, 8, 4, points)
    assert shapes.tolist() == [list(x) for x in bench.E1_LEVELS] and starts.tolist() == [0, 16700, 20900, 21950]


def test_known_bandwidth_table():
    assert ops_benchmark.known_bandwidth("NVIDIA H100 80GB HBM3") == (3350.0, "H100")
    assert ops_benchmark.known_bandwidth("NVIDIA H100 PCIe")[0] == 2000.0
    assert ops_benchmark.known_bandwidth("NVIDIA H200")[0] == 4800.0
    assert ops_benchmark.known_bandwidth("Some Future GPU") is None


def test_tiny_run_writes_json(tmp_path, capsys):
    out = tmp_path / "ops.json"
    result = ops_benchmark.run(
        device="cpu", threads=1, shapes="tiny", dtypes="float32,bfloat16", repeats=2, warmup=0, peak_bandwidth=10,
        out=str(out),
    )
    data = json.load(open(out))
    assert data == json.loads(json.dumps(result))
    for key in ("device_name", "torch", "cuda", "date", "repeats", "warmup", "statistic", "timer", "extension",
                "peak_bandwidth_GBps", "bandwidth_source", "measured_copy_GBps", "floor_formula", "shapes"):
        assert key in data, key
    assert data["peak_bandwidth_GBps"] == 10 and data["bandwidth_source"] == "argument"
    assert data["measured_copy_GBps"] > 0
    assert set(data["floor_formula"]) >= {"forward_bytes", "backward_bytes", "floor_ms", "fraction_of_floor"}
    info = data["shapes"]["tiny"]
    assert info["num_value"] == 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 == info["lq"]
    assert 0 < info["touched_value_rows"] <= info["value_rows"] == info["num_value"] * 8
    rows = data["results"]
    assert [(r["dtype"], r["impl"], r["compute_dtype"]) for r in rows] == [
        ("float32", "reference", "float32"), ("float32", "native", "float32"),
        ("bfloat16", "reference", "bfloat16"), ("bfloat16", "native", "float32"),
    ]
    # The native operator gets what a model under AMP passes: float32 locations and weights.
    loc_weights = ("sampling_locations", "attention_weights")
    assert rows[0]["input_dtypes"] == rows[1]["input_dtypes"] == dict.fromkeys(("value",) + loc_weights, "float32")
    assert rows[2]["input_dtypes"] == dict.fromkeys(("value",) + loc_weights, "bfloat16")
    assert rows[3]["input_dtypes"] == {"value": "bfloat16", **dict.fromkeys(loc_weights, "float32")}
    # ... and so moves more bytes than the all-bfloat16 reference: 12 instead of 6 per sample.
    assert rows[3]["forward_bytes"] > rows[2]["forward_bytes"]
    for r in rows:
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert r["forward_floor_ms"] == pytest.approx(r["forward_bytes"] / 10e9 * 1e3, rel=1e-3, abs=1e-4)
        assert r["forward_backward_floor_ms"] == pytest.approx(r["forward_backward_bytes"] / 10e9 * 1e3, rel=1e-3, abs=1e-4)
        assert r["forward_fraction_of_floor"] == pytest.approx(r["forward_floor_ms"] / r["forward_ms"], rel=1e-2, abs=1e-4)
    # float32 vs bfloat16 elements (R differs a little: bfloat16 rounds the locations)
    assert rows[0]["forward_bytes"] == pytest.approx(2 * rows[2]["forward_bytes"], rel=0.05)
    assert rows[1]["max_abs_diff_vs_reference"] < 1e-5
    # Against the float32 reference on the native's own inputs: only the bfloat16 output rounding.
    assert 0 < rows[3]["max_abs_diff_vs_reference"] < 2e-2
    printed = capsys.readouterr().out
    assert "forward_bytes = e * (" in printed and "fraction_of_floor = floor_ms / measured_ms" in printed


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="--shapes: unknown shape 'E9'"):
        ops_benchmark.run(device="cpu", shapes="E9")


def test_native_rows_pass_the_cuda_kernel_to_the_operator():
    """--cuda-kernels: each native row calls the operator with its `kernel` argument (no
    process-wide switch); the CPU kernel ignores the choice, an unknown name is an error."""
    inputs = bench.make_inputs("tiny", "cpu", torch.float32)
    auto = ops_benchmark.native(*inputs)
    for kernel in ops_benchmark.CUDA_KERNELS:
        torch.testing.assert_close(ops_benchmark.native(*inputs, kernel=kernel), auto, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ops_benchmark.native(*inputs, kernel="vector")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(device="cpu", cuda_kernels="auto,generic"), "needs --device cuda"),
        (dict(device="cuda", cuda_kernels="auto,vector"), "unknown kernel 'vector'"),
    ],
)
def test_cuda_kernels_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ops_benchmark.run(**kwargs)
