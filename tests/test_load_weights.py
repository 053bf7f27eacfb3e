"""The one weight loader, `load_weights(model, path, purpose=...)`: strict everywhere a wrong load
would give silent garbage, with the config option behind each mismatch named; a different class
count only when training starts from a checkpoint; EMA weights when the config asks; one-line
errors for files that are not checkpoints."""
import logging
import os

import pytest
import torch
from detectron2.config import instantiate

from detrex_lite.checkpoint import (
    CheckpointFileError,
    CheckpointMismatchError,
    convert_state_dict,
    load_weights,
    model_arch,
)
from detrex_lite.config import shrink_model
from tools_tiny_models import TINY, tiny_deformable_detr_config, tiny_detr_config

STRICT = ("eval", "predict", "export")


def _model(variant="one_stage", **overrides):
    cfg = tiny_deformable_detr_config(variant, num_classes=overrides.pop("num_classes", 6))
    for key, value in overrides.items():
        node = cfg.model
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def _trained(model, seed=1):
    """Perturb every parameter independently, as training does (per-layer heads then differ)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a shared head is one parameter: it stays shared
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model


def _save(tmp_path, model, name="ckpt.pth", *, meta=True, **extra):
    path = str(tmp_path / name)
    payload = {"model": model.state_dict(), **extra}
    if meta:
        payload["meta"] = {"arch": model_arch(model)}
    torch.save(payload, path)
    return path


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------ the hard case: box refinement
@pytest.mark.parametrize("meta", [True, False], ids=["with_metadata", "tensors_only"])
@pytest.mark.parametrize("purpose", ["train", *STRICT])
def test_box_refine_checkpoint_into_plain_model_fails(tmp_path, meta, purpose):
    """Same keys and shapes: the plain model repeats one head, so only the stored architecture or
    the tied-head values can tell."""
    two_layers = {"transformer.num_decoder_layers": 2}  # with one layer both models are the same function
    refine = _trained(_model("box_refine", **two_layers))
    plain = _model("one_stage", **two_layers)
    assert sorted(refine.state_dict()) == sorted(plain.state_dict())
    path = _save(tmp_path, refine, meta=meta)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(plain, path, purpose=purpose)
    message = _one_line(err)
    assert path in message and "model.with_box_refine=True" in message, message
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())  # nothing half-loaded


def test_box_refine_hf_checkpoint_into_plain_model_fails():
    """The same through the HF converter (transformers' own box-refinement model)."""
    pytest.importorskip("transformers")
    from detrex_lite.checkpoint import apply_state_dict
    from test_convert_parity import _hf_deformable, _our_deformable

    converted, _ = convert_state_dict(_hf_deformable(num_labels=7, with_box_refine=True).state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"model\.with_box_refine=True"):
        apply_state_dict(_our_deformable(num_classes=7), converted, purpose="predict")
    apply_state_dict(_our_deformable(num_classes=7, with_box_refine=True), converted, purpose="predict")


def test_plain_checkpoint_into_box_refine_model(tmp_path, caplog):
    """With metadata: an error naming the option. Without: the identical per-layer heads give a
    warning (an untrained box-refinement model has identical heads too)."""
    two_layers = {"transformer.num_decoder_layers": 2}
    plain = _trained(_model("one_stage", **two_layers))
    with pytest.raises(CheckpointMismatchError, match=r"model\.with_box_refine=False, the config has True"):
        load_weights(_model("box_refine", **two_layers), _save(tmp_path, plain), purpose="predict")
    with caplog.at_level(logging.WARNING, logger="detrex_lite.checkpoint.loader"):
        bare = _save(tmp_path, plain, "bare.pth", meta=False)
        report = load_weights(_model("box_refine", **two_layers), bare, purpose="predict")
    assert report.warnings and "model.with_box_refine=False" in report.warnings[0]
    assert any("identical" in r.getMessage() for r in caplog.records)


def test_matching_checkpoint_loads_exactly(tmp_path):
    for variant in ("one_stage", "box_refine", "two_stage"):
        source = _trained(_model(variant))
        target = _model(variant)
        report = load_weights(target, _save(tmp_path, source, f"{variant}.pth"), purpose="eval")
        assert report.missing == [] and report.unexpected == [] and not report.warnings
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


# ------------------------------------------------------------------ other architecture options
@pytest.mark.parametrize(
    "source_kwargs, target_kwargs, option",
    [
        (dict(variant="two_stage"), dict(variant="box_refine"), "model.as_two_stage=True"),
        (dict(variant="one_stage"), dict(**{"transformer.num_feature_levels": 3, "neck.num_outs": 3}),
         "model.transformer.num_feature_levels=4"),
        (dict(variant="one_stage"), dict(**{"transformer.num_encoder_layers": 2}), "model.transformer.num_encoder_layers=1"),
        (dict(variant="one_stage"), dict(**{"transformer.num_decoder_layers": 2}), "model.transformer.num_decoder_layers=1"),
        (dict(variant="one_stage"), dict(num_queries=20), "model.num_queries=12"),
        (dict(variant="one_stage"), dict(**{"transformer.d_model": 48}),
         "model.transformer.d_model=32"),
    ],
    ids=["two_stage", "levels", "encoder_layers", "decoder_layers", "queries", "d_model"],
)
@pytest.mark.parametrize("meta", [True, False], ids=["with_metadata", "tensors_only"])
def test_architecture_mismatch_names_the_option(tmp_path, source_kwargs, target_kwargs, option, meta):
    source = _model(**source_kwargs)
    target_kwargs = dict(target_kwargs)
    target = _model(target_kwargs.pop("variant", "one_stage"), **target_kwargs)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(target, _save(tmp_path, source, meta=meta), purpose="export")
    assert option in _one_line(err)


def test_shape_mismatch_lists_key_and_both_shapes(tmp_path):
    model = _model()
    state = model.state_dict()
    state["transformer.encoder.layers.0.linear1.weight"] = torch.zeros(128, 32)
    path = str(tmp_path / "bad.pth")
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(_model(), path, purpose="eval")
    assert "transformer.encoder.layers.0.linear1.weight: (128, 32) in the checkpoint, (64, 32) in the model" in _one_line(err)
    assert "transformer.encoder.layers.0.linear1.weight" in err.value.details


# ------------------------------------------------------------------ class count
def test_class_count_only_when_training(tmp_path, caplog):
    source = _trained(_model(num_classes=7))
    path = _save(tmp_path, source)
    for purpose in STRICT:
        with pytest.raises(CheckpointMismatchError) as err:
            load_weights(_model(num_classes=6), path, purpose=purpose)
        assert "the checkpoint has 7 classes, the config 6 (set model.num_classes=7" in _one_line(err)

    target = _model(num_classes=6)
    heads = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("class_embed")}
    with caplog.at_level(logging.WARNING, logger="detrex_lite.checkpoint.loader"):
        report = load_weights(target, path, purpose="train")
    assert {k for k, _, _ in report.skipped_class_heads} == set(heads)
    assert len([r for r in caplog.records if "class heads" in r.getMessage()]) == 1
    for key, value in target.state_dict().items():
        expected = heads[key] if key in heads else source.state_dict()[key]
        assert torch.equal(value, expected), key


def test_detr_class_count_counts_without_no_object(tmp_path):
    cfg = tiny_detr_config(num_classes=7)
    source = instantiate(cfg.model)
    path = _save(tmp_path, source)
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint has 7 classes, the config 5"):
        load_weights(instantiate(tiny_detr_config(num_classes=5).model), path, purpose="predict")


# ------------------------------------------------------------------ EMA
def test_ema_weights_when_the_config_asks(tmp_path):
    model = _trained(_model())
    shadow = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    path = _save(tmp_path, model, model_ema={"decay": 0.9, "num_updates": 3, "shadow": shadow})
    cfg = tiny_deformable_detr_config()
    cfg.train.model_ema = dict(enabled=True, decay=0.9, use_ema_weights_for_eval_only=True)

    target = _model()
    report = load_weights(target, path, purpose="predict", cfg=cfg)
    assert report.ema
    assert torch.equal(target.state_dict()["transformer.level_embed"], shadow["transformer.level_embed"])

    target = _model()
    assert not load_weights(target, path, purpose="train", cfg=cfg).ema  # fine-tuning: the raw weights
    assert torch.equal(target.state_dict()["transformer.level_embed"], model.state_dict()["transformer.level_embed"])

    with pytest.raises(CheckpointMismatchError, match="holds no EMA weights") as err:
        load_weights(_model(), _save(tmp_path, model, "no_ema.pth"), purpose="eval", cfg=cfg)
    _one_line(err)


# ------------------------------------------------------------------ files that are not checkpoints
def _write_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("https://example.com/model.pth\n")
    elif kind == "lfs_pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 167\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "list":
        torch.save([torch.zeros(2), torch.ones(2)], path)
    elif kind == "truncated":
        torch.save({"model": {"a": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "no_tensors":
        torch.save({"model": {"a": 1}}, path)
    elif kind == "plain_pickle_list":  # pickle.dump, not torch.save
        import pickle

        path.write_bytes(pickle.dumps([1, 2, 3]))
    elif kind == "plain_pickle_numpy":
        import pickle

        import numpy as np

        path.write_bytes(pickle.dumps({"model": {"a": np.zeros(3)}}))
    return str(path)


@pytest.mark.parametrize(
    "kind, says",
    [
        ("text", "is a text file, not a checkpoint (it starts with 'https://example.com/model.pth')"),
        ("lfs_pointer", "a Git LFS pointer: run git lfs pull"),
        ("empty", "the file is empty"),
        ("random", "not a PyTorch checkpoint"),
        ("list", "holds a list, not a state dict"),
        ("truncated", "truncated or damaged"),
        ("no_tensors", "has non-tensor entries (a)"),
        # a plain pickle used to be "not a PyTorch checkpoint (random or damaged bytes?)"
        ("plain_pickle_list", "is a plain Python pickle (pickle.dump, not torch.save) holding a list, not a checkpoint"),
        ("plain_pickle_numpy", "is a plain Python pickle (pickle.dump, not torch.save) holding objects of numpy."),
    ],
)
def test_unreadable_files_are_one_line(tmp_path, kind, says):
    path = _write_bad(tmp_path, kind)
    with pytest.raises(CheckpointFileError) as err:
        load_weights(_model(), path, purpose="train")
    message = _one_line(err)
    assert message.startswith(f"{path}: ") and says in message, message
    assert "weights_only=False" not in message
    if kind != "no_tensors":
        assert "tools/train_net.py or tools/convert_checkpoint.py" in message


@pytest.mark.parametrize(
    "meta, says",
    [
        ("abc", "its 'meta' is a str, expected a dict of run metadata"),
        ([1, 2], "its 'meta' is a list, expected a dict of run metadata"),
        ({"arch": "DeformableDETR"}, "meta['arch'] is a str ('DeformableDETR'), expected a dict"),
        ({"thing_classes": "cat"}, "meta['thing_classes'] is a str ('cat'), expected a list or a tuple"),
        ({"num_classes": True}, "meta['num_classes'] is a bool (True), expected an int"),
        ({"test_resize": {"short_edge_length": [800]}}, "meta['test_resize'] is {'short_edge_length': [800]}, expected"),
    ],
)
@pytest.mark.parametrize("purpose", ["train", "eval"])
def test_checkpoint_meta_of_the_wrong_type_names_the_file_and_key(tmp_path, meta, says, purpose):
    """checkpoint["meta"] that is not the run metadata training writes (a str, a list, a key of
    the wrong type): one line naming the file and the key, nothing loaded. A str or a list used to
    end in a traceback (``ValueError: dictionary update sequence element #0 ...``)."""
    path = _save(tmp_path, _trained(_model()), meta=False)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["meta"] = meta
    torch.save(checkpoint, path)
    target = _model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointFileError) as err:
        load_weights(target, path, purpose=purpose)
    message = _one_line(err)
    assert message.startswith(f"{path}: ") and says in message, message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_own_detr_weights_into_deformable_detr(tmp_path):
    """detrex_lite DETR weights are not "official-detr weights"."""
    detr = instantiate(tiny_detr_config().model)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(_model(), _save(tmp_path, detr, meta=False), purpose="train")
    message = _one_line(err)
    assert "official" not in message
    assert "these are detrex_lite DETR weights and the config builds DeformableDETR" in message


def test_weights_of_a_family_not_imported_yet_are_named(tmp_path):
    """DETR weights (twice as wide) into a Deformable DETR config, in a process that imported
    only the Deformable DETR family, as train_net with a Deformable DETR config does: the
    families beside the model's are imported when a load fails, and the message says they are
    DETR weights. It used to list 123 shape mismatches under "check
    model.transformer.num_encoder_layers, ..." without a word about DETR."""
    import subprocess
    import sys

    cfg = tiny_detr_config()
    shrink_model(cfg.model, **dict(TINY, d_model=64, stem_out_channels=16), num_queries=12)
    path = _save(tmp_path, instantiate(cfg.model), meta=False)
    script = f"""
import sys
from detectron2.config import instantiate
from detrex_lite.checkpoint import CheckpointMismatchError, load_weights
from tools_tiny_models import tiny_deformable_detr_config
model = instantiate(tiny_deformable_detr_config().model)
assert "projects.detr" not in sys.modules, "the test needs a process without the DETR family"
try:
    load_weights(model, {path!r}, purpose="eval")
except CheckpointMismatchError as e:
    print(e)
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(tests), tests, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith(f"{path} does not fit the model (eval): these are detrex_lite DETR weights and the "
                           "config builds DeformableDETR: use a DETR config; "), line
    assert "check model.transformer" not in line


def test_weights_another_family_recognises_are_named_before_the_models_options(tmp_path):
    """Deformable DETR weights (box refinement: a head per decoder layer) without metadata into
    a DINO config (one shared head): the DINO family does not recognise them, the Deformable DETR
    family does, so that is what the message says. It used to explain them with DINO's options
    ("... trained with model.share_heads=False, as detrex's DINO ...")."""
    from dino_tiny_model import tiny_dino_config

    path = _save(tmp_path, _trained(_model("box_refine", **{"transformer.num_decoder_layers": 2})), meta=False)
    dino = instantiate(tiny_dino_config().model).eval()
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(dino, path, purpose="eval")
    message = _one_line(err)
    assert message.startswith(f"{path} does not fit the model (eval): these are detrex_lite DeformableDETR weights "
                              "and the config builds DINO: use a DeformableDETR config; "), message
    assert "share_heads" not in message


def test_every_tool_refuses_a_box_refine_checkpoint_for_the_plain_config(tmp_path, capsys):
    """Predictor, export_onnx.py and benchmark.py --checkpoint all go through the shared loader."""
    from detrex_lite.benchmark.options import parse_benchmark_args
    from detrex_lite.benchmark.runner import run_benchmark
    from detrex_lite.export.onnx_tool import export_onnx_cli
    from detrex_lite.export.options import parse_export_onnx_args
    from detrex_lite.predictor import Predictor
    from tools_tiny_models import save_config

    two_layers = {"transformer.num_decoder_layers": 2}
    path = _save(tmp_path, _trained(_model("box_refine", **two_layers)), meta=False)
    cfg = tiny_deformable_detr_config("one_stage")
    cfg.model.transformer.num_decoder_layers = 2
    cfg_path = save_config(cfg, str(tmp_path / "plain.yaml"))
    says = f"{path} does not fit the model"

    with pytest.raises(CheckpointMismatchError, match="model.with_box_refine=True"):
        Predictor(cfg_path, path, device="cpu")
    assert export_onnx_cli(parse_export_onnx_args(
        ["--config-file", cfg_path, "--checkpoint", path, "--output", str(tmp_path / "m.onnx")]
    )) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"export_onnx: error: {says} (export): ") and "model.with_box_refine=True" in err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(CheckpointMismatchError, match="model.with_box_refine=True"):
        run_benchmark(parse_benchmark_args(["--config-file", cfg_path, "--device", "cpu", "--checkpoint", path, "--iters", "1"]))


# ------------------------------------------------------------------ poisoned values
@pytest.mark.parametrize("purpose", ["train", "eval", "predict", "export"])
def test_non_finite_weights_are_refused_with_their_names(tmp_path, purpose):
    """One NaN weight used to give an AP (and "score": NaN results) with rc 0; all-NaN weights an
    AssertionError deep in the box code; as init, a message blaming optimizer.lr."""
    from detrex_lite.checkpoint import CheckpointError

    source = _trained(_model())
    state = source.state_dict()
    name = next(k for k in state if k.startswith("transformer.encoder.layers.0.") and k.endswith("weight"))
    state[name][0].view(-1)[0] = float("nan")
    path = _save(tmp_path, source)
    target = _model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_weights(target, path, purpose=purpose)
    message = _one_line(e)
    assert message.startswith(f"{path}: 1 tensor(s) hold NaN or infinite values: {name} (damaged weights")
    assert message.endswith("; nothing was loaded")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_integer_weights_are_refused(tmp_path):
    from detrex_lite.checkpoint import CheckpointError

    source = _model()
    state = {k: (v.round().long() if k.startswith("neck.") and v.is_floating_point() else v) for k, v in source.state_dict().items()}
    path = str(tmp_path / "ints.pth")
    torch.save({"model": state, "meta": {"arch": model_arch(source)}}, path)
    with pytest.raises(CheckpointError, match=r"tensor\(s\) are integers where the model has floating-point weights: neck\."):
        load_weights(_model(), path, purpose="eval")
