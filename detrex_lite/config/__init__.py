"""Config helpers: loading the shipped configs, class counts from dataset metadata
(``num_classes_from_dataset``, from :mod:`detrex_lite.data.classes`), and the checks that train_net
runs before it builds anything."""
from detrex_lite.data.classes import num_classes_from_dataset

from .get_config import configs_dir, get_config
from .shrink import shrink_model
from .validate import (
    ConfigError,
    apply_overrides_checked,
    check_init_checkpoint,
    check_num_classes,
    check_structure,
    load_config_file,
)

__all__ = [
    "ConfigError",
    "apply_overrides_checked",
    "check_init_checkpoint",
    "check_num_classes",
    "check_structure",
    "configs_dir",
    "get_config",
    "load_config_file",
    "num_classes_from_dataset",
    "shrink_model",
]
