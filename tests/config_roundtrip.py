"""Shared check for config tests: a LazyConfig survives save -> load unchanged."""
from detectron2.config import LazyConfig


def save_and_reload(cfg, tmp_path):
    """Saves `cfg` as YAML, loads it back, and asserts that saving the reloaded config writes the
    same text (no lambdas lost, interpolations intact). Returns the reloaded config."""
    saved, again = tmp_path / "config.yaml", tmp_path / "again.yaml"
    LazyConfig.save(cfg, str(saved))
    reloaded = LazyConfig.load(str(saved))
    LazyConfig.save(reloaded, str(again))
    assert saved.read_text() == again.read_text()
    return reloaded
