"""tools/print_config.py (detrex_lite.cli.print_config, detrex_lite.config.printing): the printed
YAML is the config with overrides applied, interpolations resolved and derived values computed;
--diff lists exactly the differing keys; clear errors."""
import os

import yaml
from detectron2.config import LazyConfig

from detrex_lite.cli import print_config
from detrex_lite.config import printing
from tests.tools_tiny_models import REPO

CONFIGS = os.path.join(REPO, "projects/deformable_detr/configs")
DEMO = os.path.join(CONFIGS, "deformable_detr_r18_demo.py")


def printed_yaml(capsys, argv):
    assert print_config.main(argv) == 0
    out = capsys.readouterr().out
    return out, yaml.safe_load(out)


def test_resolved_yaml_with_overrides_and_derived_values(capsys):
    out, cfg = printed_yaml(capsys, [DEMO, "train.max_iter=600", "model.num_queries=30"])
    assert cfg["train"]["max_iter"] == 600
    assert cfg["model"]["num_queries"] == 30
    # derived: the class count read from the dataset metadata (6 demo shapes), then interpolated
    assert cfg["model"]["num_classes"] == 6
    assert cfg["model"]["criterion"]["num_classes"] == 6
    assert "#   model.num_classes = 6  <- num_classes_from_dataset(names='detrex_demo_train')" in out
    # interpolation follows the override: two_stage_num_proposals = ${..num_queries}
    assert cfg["model"]["transformer"]["two_stage_num_proposals"] == 30
    assert cfg["dataloader"]["evaluator"]["dataset_name"] == "detrex_demo_val"
    assert cfg["model"]["_target_"] == "projects.deformable_detr.modeling.deformable_detr.DeformableDETR"
    assert list(cfg["model"]["backbone"])[0] == "_target_"
    assert "${" not in out


def test_saved_config_yaml_prints_the_same(tmp_path, capsys):
    cfg = LazyConfig.load(DEMO)
    path = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, path)
    _, from_py = printed_yaml(capsys, [DEMO])
    _, from_yaml = printed_yaml(capsys, [path])
    assert printing.flatten(from_yaml) == printing.flatten(from_py)


def test_diff_lists_the_differing_keys(capsys):
    base = os.path.join(CONFIGS, "deformable_detr_r50_50ep.py")
    two_stage = os.path.join(CONFIGS, "deformable_detr_r50_two_stage_50ep.py")
    assert print_config.main([base, "--diff", two_stage, "model.num_queries=100"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    rows.pop("key")
    assert set(rows) == {
        "model.transformer.two_stage", "model.with_box_refine", "model.as_two_stage", "train.output_dir",
        "model.num_queries", "model.transformer.two_stage_num_proposals",
    }
    assert rows["model.num_queries"] == "| model.num_queries | 300 | 100 |"
    assert out.startswith("6 keys differ")
    assert print_config.main([DEMO, "--diff", DEMO]) == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_of_nested_and_missing_keys():
    a = {"x": {"y": [1, 2], "z": 1}, "same": "s"}
    b = {"x": {"y": [1, 3, 4]}, "same": "s", "new": {"k": True}}
    rows = printing.diff(a, b)
    missing = printing.MISSING
    assert rows == [("x.y.1", 2, 3), ("x.z", 1, missing), ("x.y.2", missing, 4), ("new.k", missing, True)]


def test_clear_errors(tmp_path, capsys):
    for argv, message in (
        ([str(tmp_path / "nope.py")], "config file not found"),
        ([DEMO, "train.max_itr=5"], "did you mean 'train.max_iter'"),
        ([DEMO, "--diff", str(tmp_path / "other.py")], "config file not found"),
    ):
        assert print_config.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
