"""Fuzzing of ms_deform_attn's input validation (hypothesis).

Random shapes, then at most one corruption of one argument: a corrupted call must raise
ValueError (never another exception, a crash or an out-of-bounds read), and an uncorrupted
call, contiguous or not, must equal the pure-PyTorch reference.
"""
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
