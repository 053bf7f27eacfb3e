"""Fuzzing of ms_deform_attn's input validation (hypothesis), and of the raw compiled operators.

Random shapes, then at most one corruption of one argument: a corrupted call must raise
ValueError (never another exception, a crash or an out-of-bounds read), and an uncorrupted
call, contiguous or not, must equal the pure-PyTorch reference. The raw operators
(torch.ops.detrex_lite.ms_deform_attn_forward / _backward, no Python checks in front) get random
inconsistent layouts in a subprocess, which must survive.
"""
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detrex_lite.layers import ms_deform_attn, ms_deform_attn_pytorch

CORRUPTIONS = [
    None,
    "value_rank",
    "locations_rank",
    "weights_rank",
    "shapes_rank",
    "value_S",
    "locations_N",
    "locations_M",
    "locations_L",
    "locations_xy",
    "weights_P",
    "weights_Lq",
    "shapes_int32",
    "shapes_float",
    "start_index_int32",
    "start_index_wrong",
    "start_index_length",
    "shapes_nonpositive",
    "weights_dtype",
    "locations_dtype",
    "value_int",
    "value_not_tensor",
    "im2col_step_zero",
    "im2col_step_float",
]


@st.composite
def problems(draw):
    n = draw(st.integers(1, 3))
    m = draw(st.integers(1, 3))
    d = draw(st.integers(1, 5))
    num_levels = draw(st.integers(1, 3))
    p = draw(st.integers(1, 3))
    lq = draw(st.integers(1, 6))
    shapes = [(draw(st.integers(1, 5)), draw(st.integers(1, 5))) for _ in range(num_levels)]
    corruption = draw(st.sampled_from(CORRUPTIONS))
    non_contiguous = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n, m, d, p, lq, shapes, corruption, non_contiguous, seed


def build(n, m, d, p, lq, shapes, non_contiguous, seed):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    num_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    # Locations in [-0.2, 1.2]: some points fall outside the maps.
    loc = torch.rand(n, lq, m, num_levels, p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, num_levels, p, generator=g, dtype=torch.float64)
    if non_contiguous:
        value = value.transpose(0, 1).contiguous().transpose(0, 1)
        loc = loc.transpose(1, 2).contiguous().transpose(1, 2)
        weights = weights[..., ::1].transpose(3, 4).contiguous().transpose(3, 4)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    return {"value": value, "spatial_shapes": spatial, "level_start_index": starts,
            "sampling_locations": loc, "attention_weights": weights, "im2col_step": 2}


def corrupt(args, corruption):
    a = dict(args)
    v, loc, w, sh, st_ = (a[k] for k in ("value", "sampling_locations", "attention_weights",
                                          "spatial_shapes", "level_start_index"))
    if corruption == "value_rank":
        a["value"] = v.flatten(2)
    elif corruption == "locations_rank":
        a["sampling_locations"] = loc[..., 0]
    elif corruption == "weights_rank":
        a["attention_weights"] = w.unsqueeze(-1)
    elif corruption == "shapes_rank":
        a["spatial_shapes"] = sh.flatten()
    elif corruption == "value_S":
        a["value"] = torch.cat([v, v[:, :1]], dim=1)
    elif corruption == "locations_N":
        a["sampling_locations"] = torch.cat([loc, loc[:1]], dim=0)
    elif corruption == "locations_M":
        a["sampling_locations"] = torch.cat([loc, loc[:, :, :1]], dim=2)
    elif corruption == "locations_L":
        a["sampling_locations"] = torch.cat([loc, loc[:, :, :, :1]], dim=3)
    elif corruption == "locations_xy":
        a["sampling_locations"] = torch.cat([loc, loc[..., :1]], dim=5)
    elif corruption == "weights_P":
        a["attention_weights"] = torch.cat([w, w[..., :1]], dim=4)
    elif corruption == "weights_Lq":
        a["attention_weights"] = torch.cat([w, w[:, :1]], dim=1)
    elif corruption == "shapes_int32":
        a["spatial_shapes"] = sh.int()
    elif corruption == "shapes_float":
        a["spatial_shapes"] = sh.double()
    elif corruption == "start_index_int32":
        a["level_start_index"] = st_.int()
    elif corruption == "start_index_wrong":
        a["level_start_index"] = st_ + 1
    elif corruption == "start_index_length":
        a["level_start_index"] = torch.cat([st_, st_[-1:]])
    elif corruption == "shapes_nonpositive":
        bad = sh.clone()
        bad[0, 0] = -bad[0, 0]
        a["spatial_shapes"] = bad
    elif corruption == "weights_dtype":
        a["attention_weights"] = w.float()
    elif corruption == "locations_dtype":
        a["sampling_locations"] = loc.float()
    elif corruption == "value_int":
        a["value"] = v.long()
    elif corruption == "value_not_tensor":
        a["value"] = v.tolist()
    elif corruption == "im2col_step_zero":
        a["im2col_step"] = 0
    elif corruption == "im2col_step_float":
        a["im2col_step"] = 1.5
    else:
        raise AssertionError(corruption)
    return a


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_validation_fuzz(problem):
    n, m, d, p, lq, shapes, corruption, non_contiguous, seed = problem
    args = build(n, m, d, p, lq, shapes, non_contiguous, seed)
    if corruption is None:
        out = ms_deform_attn(**args)
        ref = ms_deform_attn_pytorch(
            args["value"], args["spatial_shapes"], args["sampling_locations"], args["attention_weights"]
        )
        assert out.shape == (n, lq, m * d)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
        return
    bad = corrupt(args, corruption)
    # "value_S" with a single 1x1 level and such: every corruption above breaks an invariant.
    with pytest.raises(ValueError, match="ms_deform_attn: "):
        ms_deform_attn(**bad)


# Runs in a subprocess: a segfault or heap corruption there fails the test instead of the run.
RAW_OPS_FUZZ = textwrap.dedent(
    """
    import random, sys
    import torch
    from detrex_lite.layers import ms_deform_attn_function as msda
    assert msda.extension_available("cpu")
    fwd, bwd = torch.ops.detrex_lite.ms_deform_attn_forward, torch.ops.detrex_lite.ms_deform_attn_backward
    rng = random.Random(int(sys.argv[1]))
    torch.manual_seed(int(sys.argv[1]))
    SIZES = [0, 1, 2, 3, 5, -1, -3, 10_000, 10_000_000, 2**31, 2**40, 2**62, -(2**63)]
    errors = correct = 0
    for case in range(int(sys.argv[2])):
        n, m, d, lq, p = (rng.randint(1, 3) for _ in range(5))
        levels = [(rng.randint(1, 4), rng.randint(1, 4)) for _ in range(rng.randint(1, 3))]
        s = sum(h * w for h, w in levels)
        value = torch.randn(n, s, m, d, dtype=torch.float64)
        loc = torch.rand(n, lq, m, len(levels), p, 2, dtype=torch.float64) * 1.4 - 0.2
        attn = torch.rand(n, lq, m, len(levels), p, dtype=torch.float64)
        shapes = torch.tensor(levels, dtype=torch.int64)
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        kind = rng.choice(["shape_entry", "start_entry", "both", "swap", "value_S", "none", "tensor_shape"])
        if kind in ("shape_entry", "both"):
            shapes[rng.randrange(len(levels)), rng.randrange(2)] = rng.choice(SIZES)
        if kind in ("start_entry", "both"):
            starts[rng.randrange(len(levels))] = rng.choice(SIZES + [s, s - 1, s + 1])
        if kind == "swap":
            shapes = shapes.flip(1)
        if kind == "value_S":
            value = value[:, : rng.randint(0, s)]
        grad = torch.randn(n, lq, m * d, dtype=torch.float64)
        if kind == "tensor_shape":  # the C++ entry's shape-level checks
            which = rng.randrange(8)
            if which == 0:
                value = value.flatten(2)
            elif which == 1:
                loc = loc[:, :, :, :, :, :1]
            elif which == 2:
                attn = attn[..., :-1] if p > 1 else attn.unsqueeze(-1)
            elif which == 3:
                loc = torch.cat([loc, loc[:1]])
            elif which == 4:
                shapes = shapes.int()
            elif which == 5:
                starts = starts[:-1] if len(levels) > 1 else starts.view(1, 1)
            elif which == 6:
                grad = grad[:, :, :-1] if m * d > 1 else grad.unsqueeze(-1)
            else:
                attn = attn.float()
        expected_starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        consistent = (kind != "tensor_shape" and bool((shapes > 0).all())
                      and int(shapes.prod(1).sum()) == value.shape[1] and torch.equal(starts, expected_starts))
        try:
            out = fwd(value, shapes, starts, loc, attn, 64)
            grads = bwd(value, shapes, starts, loc, attn, grad, 64)
        except RuntimeError as e:
            names = ("spatial_shapes", "level_start_index", "value", "sampling_loc", "attn_weight", "grad_output")
            assert any(name in str(e) for name in names), (kind, str(e))
            errors += 1
            continue
        assert consistent, f"case {case} ({kind}): {shapes.tolist()} {starts.tolist()} S={value.shape[1]} accepted"
        ref = msda.ms_deform_attn_pytorch(value, shapes, loc, attn)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        assert all(torch.isfinite(g).all() for g in grads)
        correct += 1
    print(f"survived: {errors} errors, {correct} correct results")
    """
)


def test_raw_ops_survive_inconsistent_layouts():
    """Issue: an inconsistent spatial_shapes / level_start_index made the raw operators read and
    write outside their tensors (segfault, heap corruption). Every call must now raise a
    RuntimeError naming the argument at fault (the layout, or a tensor of the wrong shape or
    dtype), or, when the inputs happen to be consistent, be right."""
    from detrex_lite.layers import ms_deform_attn_function as msda

    if not msda.extension_available("cpu"):
        pytest.skip("detrex_lite._C is not built")
    proc = subprocess.run([sys.executable, "-c", RAW_OPS_FUZZ, "0", "300"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    errors, correct = (int(w) for w in re.findall(r"(\d+) (?:errors|correct)", proc.stdout))
    assert errors > 150 and correct > 20, proc.stdout

