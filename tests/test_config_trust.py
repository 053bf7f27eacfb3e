"""A run folder's config.yaml may only call the project's, detectron2's and torch's building
blocks: a ``_target_`` such as ``os.system`` planted in a shared run folder is refused, naming the
key and the target, before anything is built (issue: "code in config files")."""
import glob
import os

import pytest
from detectron2.config import LazyConfig
from omegaconf import OmegaConf

from detrex_lite.config import load_config_file
from detrex_lite.config.trust import is_allowed_target, untrusted_targets
from detrex_lite.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "projects", "*", "configs", "*.py")))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_saved_as_yaml_is_trusted(config, tmp_path):
    cfg = LazyConfig.load(config)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    loaded = load_config_file(path)  # no ConfigError
    assert untrusted_targets(loaded) == []
    assert "model" in loaded


def _planted(tmp_path, target="os.system"):
    cfg = LazyConfig.load(os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py"))
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    cfg = OmegaConf.load(path)
    marker = tmp_path / "PWNED"
    cfg.model.pwn = {"_target_": target, "command": f"touch {marker}"}
    OmegaConf.save(cfg, path)
    return path, marker


def test_planted_target_is_refused_naming_key_and_target(tmp_path):
    path, marker = _planted(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value).startswith(f"{path}: model.pwn has _target_ 'os.system', which a saved config may not call")
    assert "--trust-config" in str(e.value)
    assert not marker.exists()
    assert load_config_file(path, trust=True).model.pwn._target_ == "os.system"  # trusted: loads


def test_predictor_from_run_refuses_a_planted_target(tmp_path):
    from detrex_lite.predictor import Predictor

    path, marker = _planted(tmp_path)
    (tmp_path / "model_final.pth").write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(ConfigError, match="model.pwn has _target_ 'os.system'"):
        Predictor.from_run(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "target, allowed",
    [
        ("detrex_lite.modeling.SetCriterion", True),
        ("projects.deformable_detr.modeling.DeformableDETR", True),
        ("torch.optim.AdamW", True),
        ("detectron2.data.build_detection_test_loader", True),
        ("fvcore.common.param_scheduler.MultiStepParamScheduler", True),
        ("os.system", False),
        ("builtins.eval", False),
        ("subprocess.run", False),
        ("torch.load", False),
        ("torch.hub.load", False),
        ("torch.utils.cpp_extension.load_inline", False),
        ("detectron2.config.LazyConfig.load", False),
        ("detrex_lite.checkpoint.io._torch_load", False),
        ("detrex_lite.modeling..x", False),
        (42, False),
        ("${model.x}", False),
    ],
)
def test_allow_list(target, allowed):
    assert is_allowed_target(target) is allowed


def test_users_own_modules_are_trusted_installed_ones_are_not():
    from detrex_lite.config.trust import is_users_module

    assert is_users_module("tests")  # this repository's folder, on sys.path: the user's code
    assert not is_users_module("numpy") and not is_users_module("os") and not is_users_module("sys")
    assert not is_users_module("no_such_module_anywhere")
    assert is_allowed_target("tests.engine_toy_detector.ToyDetector")


# ------------------------------------------------------------------ config.yaml that cannot be used
def _saved_tiny(tmp_path):
    """A run folder's config.yaml (the tiny demo config saved) and its text."""
    cfg = LazyConfig.load(os.path.join(REPO, "tests", "configs", "deformable_detr_tiny_demo.py"))
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    return path, open(path).read()


def _broken_config_yaml(tmp_path, kind):
    """(path, what the one line must say) of a config.yaml broken as ``kind``."""
    path, text = _saved_tiny(tmp_path)
    transformer = "projects.deformable_detr.modeling.DeformableTransformer"
    broken = {
        "bad_yaml": (text.replace("model:", "model: [\n", 1), "is not valid YAML: expected ',' or ']', but got ':' at line "),
        "binary": (bytes(range(128, 256)) * 8, "is not a text file (byte 0x80 at offset 0 is not UTF-8), not a saved config"),
        "empty": ("", "is empty; a saved config holds model, train, dataloader"),
        "a_list": ("- model\n- train\n", "holds list \"['model', 'train']\", not a config (a mapping of keys"),
        "no_such_module": (
            text.replace(transformer, "projects.deformable_detr.no_such_module.DeformableTransformer"),
            "model.transformer has _target_ 'projects.deformable_detr.no_such_module.DeformableTransformer', which does "
            "not exist: module projects.deformable_detr has no 'no_such_module'",
        ),
        "no_such_attribute": (
            text.replace(transformer, "projects.deformable_detr.modeling.NoSuchTransformer"),
            "model.transformer has _target_ 'projects.deformable_detr.modeling.NoSuchTransformer', which does not "
            "exist: module projects.deformable_detr.modeling has no 'NoSuchTransformer'",
        ),
    }[kind]
    content, says = broken
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    return path, says


BROKEN = ["bad_yaml", "binary", "empty", "a_list", "no_such_module", "no_such_attribute"]


@pytest.mark.parametrize("kind", BROKEN)
def test_config_yaml_that_cannot_be_used_is_one_line_naming_the_file(tmp_path, kind):
    """Bad YAML, a binary or empty file, a list, a _target_ whose module or attribute does not
    exist: one ConfigError line naming the file (and the key and target), before anything is
    built. They used to be tracebacks (yaml ScannerError, UnicodeDecodeError, "Are you sure that
    'X' is importable"), and an empty file "unknown config key 'train.init_checkpoint'"."""
    path, says = _broken_config_yaml(tmp_path, kind)
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {says}"), message


def test_python_tag_in_config_yaml_runs_nothing(tmp_path):
    """``!!python/object/apply:os.system`` in a config.yaml ran while detectron2's LazyConfig.load
    read the file (yaml.unsafe_load), before the _target_ allow-list was consulted. It is refused
    naming the file and the line; ``trust=True`` still reads the file as detectron2 does."""
    path, text = _saved_tiny(tmp_path)
    marker = tmp_path / "PWNED"
    with open(path, "a") as f:
        f.write(f"pwn: !!python/object/apply:os.system ['touch {marker}']\n")
    line = text.count("\n") + 1
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value).startswith(f"{path}: holds a Python object tag at line {line} column 6 ("), str(e.value)
    assert str(e.value).endswith("which would run code when read; a saved config holds plain values only. If you "
                                 "trust this file, pass --trust-config")
    assert not marker.exists()
    load_config_file(path, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["bad_yaml", "binary", "empty", "no_such_attribute"])
def test_tools_on_a_run_folder_with_an_unusable_config_yaml(tmp_path, kind, capsys):
    """The same files through ``train_net --eval-only --run`` (exit 2, one line),
    ``Predictor.from_run`` (ConfigError naming the file) and ``export_onnx --run`` (exit 2)."""
    from detrex_lite.cli.train_net import cli as train_net
    from detrex_lite.export.onnx_tool import export_onnx_cli
    from detrex_lite.export.options import parse_export_onnx_args
    from detrex_lite.predictor import Predictor

    path, says = _broken_config_yaml(tmp_path, kind)
    (tmp_path / "model_final.pth").write_bytes(b"")  # never read: the config fails first
    expected = f"{path}: {says}"
    assert train_net(["--eval-only", "--run", str(tmp_path), f"train.output_dir={tmp_path / 'eval'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"train_net: error: {expected}"), err
    with pytest.raises(ConfigError) as e:
        Predictor.from_run(str(tmp_path))
    assert str(e.value).startswith(expected)
    assert export_onnx_cli(parse_export_onnx_args(["--run", str(tmp_path), "--output", str(tmp_path / "m.onnx")])) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"export_onnx: error: {expected}"), err


def test_predictor_from_run_names_the_config_yaml_that_cannot_build_its_model(tmp_path):
    """A config.yaml whose model takes an argument it does not have: the ConfigError names the
    file (it used to be a bare TypeError from the constructor)."""
    from detrex_lite.predictor import Predictor

    path, text = _saved_tiny(tmp_path)
    with open(path, "w") as f:
        f.write(text.replace("\n  num_queries: 20\n", "\n  num_queries: 20\n  bogus_arg: 3\n", 1))
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        Predictor.from_run(str(tmp_path))
    assert str(e.value) == (f"{path}: cannot build its model (TypeError: DETRBase.__init__() got an unexpected keyword "
                            "argument 'bogus_arg')")
