"""`get_config("common/train.py")`: load one of the configs shipped in the repository."""
import os
from pathlib import Path

from detectron2.config import LazyConfig

# The configs live beside the package in the repository (they are not installed as package data:
# the project is installed in editable mode, see tools/setup.sh).
_CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def configs_dir() -> Path:
    """The repository's `configs/` directory."""
    return _CONFIGS_DIR


def get_config(relative_path: str):
    """Load `<repo>/configs/<relative_path>` with detectron2's LazyConfig.

    Args:
        relative_path: e.g. "common/train.py" or "common/data/coco_detr.py".

    Returns:
        omegaconf.DictConfig holding the file's top-level config objects.

    Raises:
        FileNotFoundError: naming the missing path and listing the configs that exist there.
    """
    path = _CONFIGS_DIR / relative_path
    if not path.is_file():
        parent = path.parent
        if parent.is_dir():
            available = sorted(
                str(p.relative_to(_CONFIGS_DIR)) for p in parent.rglob("*.py") if p.name != "__init__.py"
            )
            hint = "available under {}: {}".format(parent, ", ".join(available) or "none")
        else:
            hint = "{} does not exist".format(parent)
        raise FileNotFoundError("get_config: no config {} ({})".format(path, hint))
    return LazyConfig.load(os.fspath(path))
