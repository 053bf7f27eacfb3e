"""detrex_lite.config: get_config, num_classes_from_dataset, and the checks train_net runs
before it builds anything (unknown / mistyped override keys, class-count mismatch, paths)."""
import os

import pytest
from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

import detrex_lite.data  # noqa: F401  (registers the demo datasets)
from detrex_lite.config import (
    ConfigError,
    apply_overrides_checked,
    check_init_checkpoint,
    check_num_classes,
    check_structure,
    configs_dir,
    get_config,
    load_config_file,
    num_classes_from_dataset,
)
from detrex_lite.data import DEMO_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configs_dir_is_the_repository_configs():
    assert configs_dir() == __import__("pathlib").Path(REPO) / "configs"


def test_get_config_loads_common_train():
    train = get_config("common/train.py").train
    assert train.amp == {"enabled": False, "dtype": "float16"}
    assert train.clip_grad.params.max_norm == 0.1
    assert train.device == "auto"


def test_get_config_missing_lists_available():
    with pytest.raises(FileNotFoundError) as e:
        get_config("common/trian.py")
    msg = str(e.value)
    assert "common/trian.py" in msg and "common/train.py" in msg and "common/optim.py" in msg


def test_num_classes_from_dataset_demo():
    assert num_classes_from_dataset("detrex_demo_train") == len(DEMO_CLASSES) == 6
    assert num_classes_from_dataset(["detrex_demo_train", "detrex_demo_val"]) == 6


def test_num_classes_from_dataset_unregistered():
    with pytest.raises(KeyError, match="no_such_dataset"):
        num_classes_from_dataset("no_such_dataset")


def test_num_classes_from_dataset_loads_catalog_when_metadata_empty():
    name = "_test_engine_lazy_meta"
    calls = []

    def load():
        calls.append(1)
        MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
        return []

    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, load)
    assert num_classes_from_dataset(name) == 3
    assert calls == [1]


def test_num_classes_from_dataset_disagreeing_names():
    name = "_test_engine_two_classes"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).thing_classes = ["x", "y"]
    with pytest.raises(ValueError, match="different thing_classes"):
        num_classes_from_dataset(["detrex_demo_train", name])


def _cfg():
    return OmegaConf.create(
        {
            "model": {"num_classes": 6, "criterion": {"num_classes": "${..num_classes}"}, "hidden": 32},
            "optimizer": {"lr": 2e-4, "betas": [0.9, 0.999], "params": {"base_lr": "${..lr}"}},
            "dataloader": {"train": {"dataset": {"names": "detrex_demo_train"}}, "test": {"dataset": {"names": "detrex_demo_val"}}},
            "lr_multiplier": {},
            "train": {"max_iter": 100, "output_dir": "./out", "amp": {"enabled": False, "dtype": "float16"}, "init_checkpoint": "", "device": "auto"},
        },
        flags={"allow_objects": True},  # as LazyConfig.load creates them (LazyCall targets are objects)
    )


def test_overrides_apply_like_lazyconfig():
    cfg = _cfg()
    apply_overrides_checked(cfg, ["train.max_iter=10", "optimizer.lr=1e-3", "train.amp.enabled=True", "optimizer.betas=[0.8,0.9]"])
    assert cfg.train.max_iter == 10 and cfg.optimizer.lr == 1e-3 and cfg.train.amp.enabled is True
    assert list(cfg.optimizer.betas) == [0.8, 0.9]
    assert cfg.optimizer.params.base_lr == 1e-3  # the interpolation follows


def _override_error(override: str) -> str:
    """The message of the ConfigError that ``apply_overrides_checked`` raises for ``override``."""
    with pytest.raises(ConfigError) as e:
        apply_overrides_checked(_cfg(), [override])
    return str(e.value)


@pytest.mark.parametrize(
    "override, key, value",
    [("optimizer.lr=1", "optimizer.lr", 1), ("+model.dropout=0.1", "model.dropout", 0.1)],
    ids=["int_into_float_key_is_allowed", "plus_prefix_adds_a_key"],
)
def test_override_is_applied(override, key, value):
    cfg = _cfg()
    apply_overrides_checked(cfg, [override])
    assert OmegaConf.select(cfg, key) == value


def test_unknown_override_suggests_close_key():
    msg = _override_error("train.max_itr=10")
    assert "train.max_itr" in msg and "did you mean 'train.max_iter'" in msg and "\n" not in msg


def test_unknown_override_typo_in_parent():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        apply_overrides_checked(_cfg(), ["trian.max_iter=10"])


def test_unknown_override_without_close_match_lists_keys():
    with pytest.raises(ConfigError, match="keys of 'train': max_iter, output_dir"):
        apply_overrides_checked(_cfg(), ["train.zzzz=1"])


def test_wrong_type_override_names_key_type_and_value():
    msg = _override_error("train.max_iter=abc")
    assert "train.max_iter" in msg and "expected int" in msg and "'abc'" in msg and "100" in msg


@pytest.mark.parametrize(
    "override, expected",
    [("train.amp.enabled=1", "expected bool"), ("train.output_dir=5", "expected str"), ("optimizer.betas=0.9", "expected list")],
)
def test_wrong_type_override_other_types(override, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides_checked(_cfg(), [override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides_checked(_cfg(), ["train.max_iter"])


def test_missing_config_file_names_path(tmp_path):
    path = str(tmp_path / "nope.py")
    with pytest.raises(ConfigError, match="config file not found: " + path):
        load_config_file(path)


def test_num_classes_literal_mismatch_names_both():
    cfg = _cfg()
    cfg.model.num_classes = 80
    with pytest.raises(ConfigError) as e:
        check_num_classes(cfg)
    msg = str(e.value)
    assert "model.num_classes=80" in msg and "detrex_demo_train" in msg and "6 thing_classes" in msg


def test_num_classes_literal_match_and_lazy_call_pass():
    cfg = _cfg()
    check_num_classes(cfg)  # 6 == 6
    cfg.model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")
    check_num_classes(cfg)  # not a literal: nothing to compare
    cfg.model.criterion.num_classes = 5
    with pytest.raises(ConfigError, match="model.criterion.num_classes=5"):
        check_num_classes(cfg)


def _model_stub(num_classes):
    return {"num_classes": num_classes}


def test_num_classes_from_dataset_resolves_in_a_config():
    cfg = _cfg()
    cfg.model = L(_model_stub)(num_classes=L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}"))
    assert instantiate(cfg.model)["num_classes"] == 6


def test_missing_init_checkpoint_names_path(tmp_path):
    path = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="file not found: " + path):
        check_init_checkpoint(path)
    check_init_checkpoint("")


def test_unreadable_init_checkpoint_url_is_one_line_error(tmp_path, monkeypatch):
    from detectron2.utils.file_io import PathManager

    url = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"

    def offline(path, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(PathManager, "get_local_path", offline)
    with pytest.raises(ConfigError, match="cannot read " + url + r" \(OSError: .*convert_checkpoint.py --from torchvision-resnet"):
        check_init_checkpoint(url)
    # A URL that resolves (a cached download) passes.
    cached = tmp_path / "R-50.pkl"
    cached.write_bytes(b"x")
    monkeypatch.setattr(PathManager, "get_local_path", lambda path, **kwargs: str(cached))
    check_init_checkpoint(url)


def test_check_structure():
    cfg = _cfg()
    check_structure(cfg)
    del cfg["lr_multiplier"]
    with pytest.raises(ConfigError, match="missing top-level key\\(s\\) lr_multiplier"):
        check_structure(cfg)
    cfg = _cfg()
    cfg.train.amp = {"enabled": True, "dtype": "fp8"}
    with pytest.raises(ConfigError, match="train.amp.dtype='fp8'"):
        check_structure(cfg)


def test_optim_config_survives_save_and_load(tmp_path):
    optim = get_config("common/optim.py")
    path = str(tmp_path / "optim.yaml")
    LazyConfig.save(optim, path)
    reloaded = LazyConfig.load(path)
    assert reloaded.AdamW.params.lr_multipliers == {"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1}
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    reloaded.AdamW.params.model = model
    opt = instantiate(reloaded.AdamW)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 2e-4


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.log_period", 0, "train.log_period=0: expected a positive int"),
        ("train.checkpointer", {"period": 5, "max_to_keep": 0}, "train.checkpointer.max_to_keep=0: expected a positive int or None"),
        ("train.checkpointer", {"period": 5, "max_to_keep": -1}, "train.checkpointer.max_to_keep=-1: expected a positive int or None"),
        ("dataloader.train.total_batch_size", 0, "dataloader.train.total_batch_size=0: expected a positive int"),
        ("optimizer.lr", -1.0, "optimizer.lr=-1.0: expected a positive finite number"),
        ("optimizer.lr", float("nan"), "optimizer.lr=nan: expected a positive finite number"),
        ("train.output_dir", "", "train.output_dir='': expected a folder path (not empty)"),
    ],
)
def test_check_structure_names_values_train_net_cannot_use(key, value, message):
    """Each of these used to end in a traceback deep in detectron2 or torch (issue: one line promised)."""
    cfg = _cfg()
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as e:
        check_structure(cfg)
    assert str(e.value).startswith(message)


def test_check_structure_accepts_keep_all_and_a_file_output_dir_is_named(tmp_path):
    cfg = _cfg()
    OmegaConf.update(cfg, "train.checkpointer", {"period": 5, "max_to_keep": None}, force_add=True)
    check_structure(cfg)
    afile = tmp_path / "out"
    afile.write_text("")
    cfg.train.output_dir = str(afile)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_structure(cfg)
