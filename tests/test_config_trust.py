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
