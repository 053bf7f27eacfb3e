"""tools/analyze_model.py (detrex_lite.export.model_analysis) and detrex_lite.export.flops:
parameter and FLOP counts checked against counts worked out by hand from the layer shapes."""
import json
import math

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detrex_lite.export.flops import (
    model_flop_analysis,
    module_breakdown,
    ms_deform_attn_flops,
    synthetic_image_inputs,
)
from detrex_lite.layers.ms_deform_attn_function import extension_available
from detrex_lite.export.model_analysis import analyze, analyze_model_main
from detrex_lite.export.options import parse_analyze_model_args
from msda_fixed_layout import FixedLayoutCall
from tools_tiny_models import DEFORMABLE_DETR_MODEL, save_config, tiny_deformable_detr_config

H, W = 64, 96
_DEFORM_OP = "ms_deform_attn_forward" if extension_available("cpu") else "grid_sampler"
D_MODEL, HEADS, LEVELS, POINTS, QUERIES, CLASSES = 32, 2, 4, 2, 12, 6


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_deformable_detr_config("one_stage")
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    analysis = model_flop_analysis(model, synthetic_image_inputs((H, W), torch.device("cpu")))
    return cfg, model, analysis


def _tokens():
    # Levels at strides 8, 16, 32, 64; a stride-s map of an h x w image is ceil(h/s) x ceil(w/s).
    return sum(math.ceil(H / s) * math.ceil(W / s) for s in (8, 16, 32, 64))


def test_deformable_attention_flops(tiny):
    _, _, analysis = tiny
    head_dim = D_MODEL // HEADS
    # 4-corner bilinear (4 MACs) + attention weighting (1 MAC) per channel, query, head, level, point;
    # encoder queries are the S tokens, decoder queries the object queries.
    per_query = HEADS * LEVELS * POINTS * head_dim * 5
    expected = (_tokens() + QUERIES) * per_query
    assert _tokens() == 96 + 24 + 6 + 2
    # Traced with the compiled op when it is built, else with the grid_sample reference.
    assert analysis.by_operator()[_DEFORM_OP] == expected
    assert ms_deform_attn_flops((1, 128, 2, 16), (1, 140, 2, 4, 2, 2)) == expected
    with pytest.raises(ValueError, match="disagree"):
        ms_deform_attn_flops((2, 128, 2, 16), (1, 140, 2, 4, 2, 2))


def test_attention_and_head_flops(tiny):
    _, _, analysis = tiny
    # Decoder self-attention: Q K^T and the weighted sum, per head: Q * Q * (d_head + d_head).
    assert analysis.by_operator()["scaled_dot_product_attention"] == HEADS * QUERIES * QUERIES * 2 * (D_MODEL // HEADS)
    by_module = analysis.by_module()
    # Class head Linear(32, 6) and box MLP 32 -> 32 -> 32 -> 4 on every query (one decoder layer).
    assert by_module["model.class_embed.0"] == QUERIES * D_MODEL * CLASSES
    assert by_module["model.bbox_embed.0"] == QUERIES * (D_MODEL * D_MODEL * 2 + D_MODEL * 4)


def test_module_breakdown_params_and_flops_add_up(tiny):
    _, model, analysis = tiny
    rows = module_breakdown(model, analysis, max_depth=1)
    total = sum(p.numel() for p in model.parameters())
    assert rows[""]["params"] == total
    assert rows[""]["flops"] == analysis.total()
    children = [name for name in rows if name and "." not in name]
    # Top-level modules hold every parameter (class/box heads are shared ModuleLists: count once).
    assert sum(rows[c]["params"] for c in children) == total
    assert sum(rows[c]["flops"] for c in children) == analysis.total()
    assert rows["class_embed"]["params"] == D_MODEL * CLASSES + CLASSES


def test_tool_writes_report(tiny, tmp_path):
    cfg, _, analysis = tiny
    cfg_path = save_config(cfg, str(tmp_path / "tiny.yaml"))
    report = analyze_model_main(parse_analyze_model_args([
        "--config-file", cfg_path, "--image-size", str(H), str(W), "--json", str(tmp_path / "r.json"),
    ]))
    assert report["flops"] == analysis.total()
    assert json.load(open(tmp_path / "r.json"))["params"] == report["params"]
    assert report["flops_by_operator"][_DEFORM_OP] == analysis.by_operator()[_DEFORM_OP]


def test_reference_backend_counts_the_same_flops(tiny, monkeypatch):
    """Without the compiled op the trace runs the grid_sample reference: same total, and the
    attention backend is restored afterwards."""
    from detrex_lite.layers import ms_deform_attn_function as msda

    _, model, analysis = tiny
    not_built = msda.OpExtension(None)
    reference = model_flop_analysis(model, synthetic_image_inputs((H, W), torch.device("cpu")), extension=not_built)
    assert reference.total() == analysis.total()
    assert reference.by_operator()["grid_sampler"] == analysis.by_operator()[_DEFORM_OP]
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"auto"}


def test_deformable_detr_r50_has_the_papers_40m_parameters():
    # Zhu et al. 2021, Table 1: Deformable DETR (R50) has 40M parameters.
    cfg = LazyConfig.load(DEFORMABLE_DETR_MODEL)
    model = instantiate(cfg.model)
    report = analyze(model, ["parameter"], (800, 1333), max_depth=1)
    assert 39.5e6 < report["params"] < 40.5e6
    # The backbone's parameters are torchvision ResNet-50's convolutions (FrozenBN keeps its
    # affine terms as buffers, and there is no fc).
    import torchvision

    resnet50 = torchvision.models.resnet50()
    convs = sum(m.weight.numel() for m in resnet50.modules() if isinstance(m, torch.nn.Conv2d))
    assert report["by_module"]["backbone"]["params"] == convs


@pytest.mark.skipif(not extension_available("cpu"), reason="detrex_lite._C is not built")
def test_handle_counts_the_compiled_op_directly():
    from fvcore.nn import FlopCountAnalysis

    from detrex_lite.export.flops import ms_deform_attn_flop_jit
    from detrex_lite.layers import MultiScaleDeformableAttention

    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=3).eval()
    shapes, starts = torch.tensor([[4, 6], [2, 3]]), torch.tensor([0, 24])

    inputs = (torch.randn(1, 5, 16), torch.randn(1, 30, 16), torch.rand(1, 5, 2, 2))
    call = FixedLayoutCall(attn, shapes, starts)
    analysis = FlopCountAnalysis(call, inputs).set_op_handle("detrex_lite::ms_deform_attn_forward", ms_deform_attn_flop_jit)
    analysis.unsupported_ops_warnings(False)
    assert analysis.by_operator()["ms_deform_attn_forward"] == 5 * 2 * 2 * 3 * 8 * 5  # Lq M L P D 5
