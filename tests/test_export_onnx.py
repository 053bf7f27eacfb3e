"""ONNX export of tiny Deformable DETR (one-stage, box refinement, two-stage) and DETR, checked
with onnxruntime against PyTorch at several input sizes (batch, height and width are dynamic),
and the exported contract checked against the model itself."""
import json
import math

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate

from detrex_lite.export.onnx_export import (
    ExportableDETR,
    check_onnx_parity,
    export_onnx,
    prepare_export_inputs,
)
from detrex_lite.layers import LevelLayout, MultiScaleDeformableAttention, attention_backend
from detrex_lite.layers.ms_deform_attn_function import extension_available
from msda_fixed_layout import FixedLayoutCall
from tools_tiny_models import save_config, tiny_deformable_detr_config, tiny_detr_config

CANVAS = (96, 96)


def _build(variant):
    cfg = tiny_detr_config() if variant == "detr" else tiny_deformable_detr_config(variant)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    # Spread the class scores (the focal prior makes them all ~0.01): distinct top-k scores.
    for name, p in model.named_parameters():
        if name.startswith("class_embed") and name.endswith("bias"):
            torch.nn.init.normal_(p, std=2.0)
    return cfg, model


def _images(seed=0):
    """A batch of two images smaller than the canvas, of different sizes (so padding differs)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, 96, 72), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (3, 64, 90), dtype=torch.uint8, generator=g),
    ]


def _random_images(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


@pytest.mark.parametrize("variant", ["one_stage", "box_refine", "two_stage", "detr"])
def test_raw_outputs_match_onnxruntime_with_dynamic_batch_and_size(variant, tmp_path):
    _, model = _build(variant)
    path = str(tmp_path / f"{variant}.onnx")
    wrapper = export_onnx(model, path, CANVAS, output="raw", sample_batch_size=1)
    # Exported with one 96x96 image; run with batches of 2 differently padded images at the
    # export size and at other sizes and aspect ratios, smaller and larger (odd-sized maps at the
    # coarse levels: 64x80 -> 1x2 at stride 64, 136x104 -> 3x2).
    batches = [
        (CANVAS, _images()),
        ((64, 80), _random_images([(64, 80), (41, 57)], seed=3)),
        ((136, 104), _random_images([(120, 104), (136, 70)], seed=4)),
    ]
    for canvas, batch in batches:
        images, sizes = prepare_export_inputs(model, batch, canvas)
        assert tuple(images.shape[-2:]) == canvas
        diffs = check_onnx_parity(path, wrapper, images, sizes, atol=1e-4)
        assert diffs["ok"], (canvas, diffs)
        assert set(diffs) == {"pred_logits", "pred_boxes", "queries_reordered", "ok"}
        assert diffs["queries_reordered"] == 0


def test_level_shapes_are_ints_in_eager_mode_and_traced_values_when_tracing():
    from detrex_lite.layers.ms_deform_attn_function import level_shapes

    shapes = torch.tensor([[12, 10], [6, 5]])
    assert level_shapes(shapes) == [(12, 10), (6, 5)]
    assert all(type(v) is int for hw in level_shapes(shapes) for v in hw)

    def areas(x):
        return torch.stack([h * w for h, w in level_shapes(x)])

    traced = torch.jit.trace(areas, (shapes,), check_trace=False)
    # A graph that recorded the sizes as constants would return 120, 30 again.
    assert traced(torch.tensor([[3, 4], [1, 7]])).tolist() == [12, 7]


def test_level_layout_sizes_are_ints_in_eager_mode_and_traced_values_when_tracing():
    maps = [torch.zeros(1, 2, 12, 10), torch.zeros(1, 2, 6, 5)]
    layout = LevelLayout.from_features(maps)
    assert layout.sizes == ((12, 10), (6, 5)) and all(type(v) is int for hw in layout.sizes for v in hw)
    assert layout.spatial_shapes.tolist() == [[12, 10], [6, 5]] and layout.level_start_index.tolist() == [0, 120]

    def describe(a, b):
        layout = LevelLayout.from_features([a, b])
        areas = torch.stack([h * w for h, w in layout.sizes])
        return areas, layout.spatial_shapes, layout.level_start_index

    traced = torch.jit.trace(describe, tuple(maps), check_trace=False)
    areas, shapes, starts = traced(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 1, 7))
    assert areas.tolist() == [12, 7] and shapes.tolist() == [[3, 4], [1, 7]] and starts.tolist() == [0, 12]


@pytest.mark.parametrize("variant", ["two_stage", "detr"])
def test_detections_match_onnxruntime_and_the_model(variant, tmp_path):
    _, model = _build(variant)
    path = str(tmp_path / f"{variant}_det.onnx")
    wrapper = export_onnx(model, path, CANVAS, output="detections")
    for canvas, batch in [(CANVAS, _images(1)), ((80, 112), _random_images([(80, 112), (60, 90)], seed=6))]:
        images, sizes = prepare_export_inputs(model, batch, canvas)
        diffs = check_onnx_parity(path, wrapper, images, sizes, atol=1e-3)
        assert diffs["ok"], (canvas, diffs)
        assert diffs["scores"] < 1e-5 and diffs["boxes"] < 1e-5

    # The contract: for a single (unpadded) image of any size, the graph's outputs are the
    # model's own detections (boxes in the image's pixels, as the model gives them for
    # height/width = the image size; the model computes them with the compiled op when it is
    # built).
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size, seed in [(CANVAS, 2), ((72, 110), 7)]:
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
        x, s = prepare_export_inputs(model, [image])
        scores, labels, boxes = session.run(None, {"images": x.numpy(), "image_sizes": s.numpy()})
        with torch.no_grad():
            ref = model([{"image": image, "height": size[0], "width": size[1]}])[0]["instances"]
        assert scores.shape == labels.shape == (1, 10) and boxes.shape == (1, 10, 4)
        assert len(ref) == 10
        np.testing.assert_allclose(scores[0], ref.scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(labels[0], ref.pred_classes.numpy())
        np.testing.assert_allclose(boxes[0], ref.pred_boxes.tensor.numpy(), atol=1e-2, rtol=0)


def _reference_masks(image_sizes, feature_shapes, strides):
    """Padding masks with Python numbers: an (h, w) image covers (ceil(h / s), ceil(w / s))."""
    masks = []
    for (feat_h, feat_w), stride in zip(feature_shapes, strides):
        mask = torch.ones((len(image_sizes), feat_h, feat_w), dtype=torch.bool)
        for i, (h, w) in enumerate(image_sizes):
            mask[i, : math.ceil(h / stride), : math.ceil(w / stride)] = False
        masks.append(mask)
    return masks


def test_graph_masks_equal_the_models_masks():
    # The graph computes each level's padding mask from image_sizes with tensor ops; they must be
    # the exact masks (computed here with Python numbers), as the model gets them from a list of
    # (h, w) (padding_masks is the one function both call).
    from detrex_lite.modeling.padding import padding_masks

    rng = np.random.default_rng(0)
    strides = [8, 16, 32, 64]
    for _ in range(20):
        sizes = [(int(rng.integers(1, 97)), int(rng.integers(1, 97))) for _ in range(3)]
        shapes = [(-(-96 // s), -(-96 // s)) for s in strides]
        features = [torch.zeros(3, 1, h, w) for h, w in shapes]
        got = padding_masks(torch.tensor(sizes), features, strides)
        expected = _reference_masks(sizes, shapes, strides)
        for g, e in zip(got, expected):
            assert torch.equal(g, e), sizes
        for g, e in zip(padding_masks(sizes, features, strides), expected):
            assert torch.equal(g, e), sizes


def test_reference_path_is_traced_during_export():
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=2, num_levels=2, num_points=2).eval()
    shapes = torch.tensor([[4, 6], [2, 3]])
    starts = torch.tensor([0, 24])
    query = torch.randn(1, 5, 16)
    value = torch.randn(1, 30, 16)
    refs = torch.rand(1, 5, 2, 2)

    def trace_kinds():
        traced = torch.jit.trace(FixedLayoutCall(attn, shapes, starts), (query, value, refs), check_trace=False)
        return {node.kind() for node in traced.inlined_graph.nodes()}

    with attention_backend(attn, "pytorch"):
        kinds = trace_kinds()
        expected = attn(query, value=value, reference_points=refs, spatial_shapes=shapes, level_start_index=starts)
    assert "aten::grid_sampler" in kinds
    assert not any(k.startswith("detrex_lite::") for k in kinds)
    if extension_available("cpu"):
        assert "detrex_lite::ms_deform_attn_forward" in trace_kinds()  # restored after the block
    got = attn(query, value=value, reference_points=refs, spatial_shapes=shapes, level_start_index=starts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_rejects_old_opset_and_oversized_images(tmp_path):
    _, model = _build("one_stage")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, str(tmp_path / "x.onnx"), CANVAS, opset=13)
    with pytest.raises(ValueError, match="canvas"):
        prepare_export_inputs(model, [torch.zeros(3, 100, 10, dtype=torch.uint8)], CANVAS)
    # Two-stage selects num_queries (12) of the encoder tokens: a 16x16 sample has 2*2 + 1 + 1 + 1.
    _, two_stage = _build("two_stage")
    with pytest.raises(ValueError, match="7 encoder tokens, fewer than the 12 queries"):
        export_onnx(two_stage, str(tmp_path / "y.onnx"), (16, 16))


def test_export_tool_with_checkpoint_and_images(tmp_path):
    cfg, model = _build("box_refine")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    cfg_path = save_config(cfg, str(tmp_path / "tiny.yaml"))
    rng = np.random.default_rng(0)
    image_paths = []
    for name, (h, w) in {"a.png": (50, 120), "b.png": (90, 70)}.items():
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image_paths.append(str(tmp_path / name))
    from detrex_lite.export.onnx_tool import export_and_check
    from detrex_lite.export.options import parse_export_onnx_args

    report = export_and_check(parse_export_onnx_args([
        "--config-file", cfg_path, "--checkpoint", str(tmp_path / "model_final.pth"),
        "--output", str(tmp_path / "out" / "model.onnx"), "--check-images", *image_paths,
        "--json", str(tmp_path / "report.json"),
    ]))
    # Canvas from the test resize (max_size 96); the images resized like the test loader:
    # 50x120 -> 40x96, 90x70 -> short side 64 -> 82x64 (long side 82.3 <= 96).
    assert report["canvas"] == [96, 96]
    assert report["check_batch"] == [[40, 96], [82, 64]]
    assert report["max_abs_diff"]["ok"]
    # Dynamic height and width by default, checked at a second size (3/4 x 5/8 of the canvas).
    assert report["dynamic_size"] is True
    assert report["dynamic_size_check"]["canvas"] == [72, 60]
    assert report["dynamic_size_check"]["ok"] and report["dynamic_size_check"]["scores"] < 1e-4
    assert json.load(open(tmp_path / "report.json"))["max_abs_diff"] == report["max_abs_diff"]
    import onnx
    import onnxruntime as ort

    onnx_path = str(tmp_path / "out" / "model.onnx")
    graph = onnx.load(onnx_path).graph
    assert [i.name for i in graph.input] == ["images", "image_sizes"]
    assert [o.name for o in graph.output] == ["scores", "labels", "boxes"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    # The exported weights are the checkpoint's: the graph reproduces the saved model.
    images, sizes = prepare_export_inputs(model, _images(), CANVAS)
    got = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
        None, {"images": images.numpy(), "image_sizes": sizes.numpy()}
    )
    with torch.no_grad():
        ref = ExportableDETR(model)(images, sizes)
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-4, rtol=0)


def test_query_matching_tolerates_reordering_only():
    from detrex_lite.export.onnx_export import _matched_query_diff

    rng = np.random.default_rng(0)
    logits, boxes = rng.normal(size=(2, 6, 3)), rng.random((2, 6, 4))
    swapped = [0, 2, 1, 3, 4, 5]  # two near-tied queries sorted the other way in image 0
    logits2, boxes2 = logits.copy(), boxes.copy()
    logits2[0], boxes2[0] = logits[0, swapped], boxes[0, swapped]
    assert _matched_query_diff(logits, boxes, logits2 + 1e-6, boxes2, 1e-3) == pytest.approx((1e-6, 0.0, 2))
    boxes2[1, 4] += 0.01  # a genuinely different query is still found
    assert _matched_query_diff(logits, boxes, logits2, boxes2, 1e-3)[1] == pytest.approx(0.01)


def test_export_arguments_take_overrides_after_the_flags(tmp_path, capsys):
    from detrex_lite.export.options import parse_export_onnx_args

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    args = parse_export_onnx_args(["--config-file", "c.py", "--output", "m.onnx", "--fixed-size", "model.num_queries=10"])
    assert args.opts == ["model.num_queries=10"] and args.fixed_size
    args = parse_export_onnx_args(["--config-file", "c.py", "--output", "m.onnx", "--check-images", str(image), "--",
                                   "model.num_queries=10"])
    assert args.opts == ["model.num_queries=10"] and args.check_images == [str(image)]
    # Without the "--" the override would be read as an image: refused in one line, naming it.
    with pytest.raises(SystemExit) as exit_info:
        parse_export_onnx_args(["--config-file", "c.py", "--output", "m.onnx", "--check-images", str(image),
                                "model.num_queries=10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--check-images: model.num_queries=10 is no image" in err and " -- model" in err


def test_export_replaces_the_file_only_when_complete(tmp_path, monkeypatch):
    """A re-export that dies half-way (SIGKILL, a full disk) used to leave a 0-byte model.onnx in
    place of the good one, which onnx.load accepts; now the old file stays whole."""
    from detrex_lite.export import onnx_export as module

    _, model = _build("one_stage")
    path = tmp_path / "model.onnx"
    export_onnx(model, str(path), CANVAS)
    good = path.read_bytes()
    assert len(good) > 1000

    def dies_half_way(wrapper, images, image_sizes, target, dynamic_axes, opset):
        with open(target, "wb") as f:
            f.write(good[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "_export_checked", dies_half_way)
    with pytest.raises(OSError):
        export_onnx(model, str(path), CANVAS)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left


def test_unwritable_output_fails_before_the_export(tmp_path, capsys):
    """An --output that cannot be written used to fail with a traceback after the whole export."""
    from detrex_lite.export.onnx_tool import export_onnx_cli
    from detrex_lite.export.options import parse_export_onnx_args

    cfg, _ = _build("one_stage")
    cfg_path = save_config(cfg, str(tmp_path / "tiny.yaml"))
    (tmp_path / "afile").write_text("")  # a file where the output's folder should be (fails as root too)
    output = tmp_path / "afile" / "m.onnx"
    rc = export_onnx_cli(parse_export_onnx_args(["--config-file", cfg_path, "--output", str(output)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith(f"export_onnx: error: --output {output}: cannot write in {tmp_path / 'afile'} (")
    assert "Exported" not in "\n".join(err)


def test_output_that_is_a_folder_fails_before_the_export(tmp_path, capsys):
    from detrex_lite.export.onnx_tool import export_onnx_cli
    from detrex_lite.export.options import parse_export_onnx_args

    cfg, _ = _build("one_stage")
    cfg_path = save_config(cfg, str(tmp_path / "tiny.yaml"))
    rc = export_onnx_cli(parse_export_onnx_args(["--config-file", cfg_path, "--output", str(tmp_path)]))
    assert rc == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"export_onnx: error: --output {tmp_path} is a folder: give a file path"
