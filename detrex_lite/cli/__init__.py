"""What every command-line tool shares, importable without torch (stdlib only).

Tools parse their arguments first (so ``--help`` answers before torch loads), then import the
package function that does the work.
"""
from .overrides import add_override_arguments, check_flags_before_overrides, collect_overrides

__all__ = ["add_override_arguments", "check_flags_before_overrides", "collect_overrides"]
