"""What every command-line tool shares, importable without torch (stdlib only).

Tools parse their arguments first (so ``--help`` answers before torch loads), then call
:func:`import_detectron2_quietly` and import the package function that does the work.
"""
from .overrides import (
    add_override_arguments,
    add_trust_config_argument,
    check_flags_before_overrides,
    collect_overrides,
)
from .quiet_imports import import_detectron2_quietly

__all__ = [
    "add_override_arguments", "add_trust_config_argument", "check_flags_before_overrides", "collect_overrides",
    "import_detectron2_quietly",
]
