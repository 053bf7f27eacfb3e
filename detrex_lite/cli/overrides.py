"""One config-override syntax for every tool: bare ``key=value`` after the flags, as
``tools/train_net.py`` takes them (``--opts key=value`` is still accepted, with a deprecation
line on stderr)."""
import argparse
import sys
from typing import List, Optional, Sequence

from detrex_lite.errors import ConfigError

__all__ = [
    "add_override_arguments", "add_trust_config_argument", "check_flags_before_overrides", "collect_overrides",
    "parse_args_with_overrides",
]

_HELP = (
    "config overrides after the flags, e.g. train.max_iter=1000 train.output_dir=output/run "
    "(+key=value adds a key)"
)


def add_override_arguments(parser: argparse.ArgumentParser, help: str = _HELP) -> None:
    """Add the positional ``opts`` (bare ``key=value`` after the flags) and the deprecated
    ``--opts KEY=VALUE ...`` spelling to ``parser``."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=None, metavar="key=value", help=help)
    parser.add_argument("--opts", dest="deprecated_opts", nargs="*", default=None, metavar="KEY=VALUE",
                        help="deprecated spelling of the overrides: write key=value after the flags")


def add_trust_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--trust-config`` (``args.trust_config``): let a saved config.yaml call any
    ``_target_`` instead of only the allow-list of :mod:`detrex_lite.config.trust`."""
    parser.add_argument(
        "--trust-config", action="store_true",
        help="let a saved config.yaml call any _target_, not only the allow-list of docs/reliability.md "
        "(only for a file you trust: a config calls code)",
    )


def check_flags_before_overrides(parser: argparse.ArgumentParser, opts: Optional[Sequence[str]]) -> None:
    """A flag written after the first override is swallowed by the overrides: say so (ConfigError)."""
    flags = {s for action in parser._actions for s in action.option_strings}
    for item in opts or []:
        name = item.split("=", 1)[0]
        if name in flags:
            first = next(o for o in opts if o != "--")
            raise ConfigError(
                f"flag {name} comes after the config override '{first}': flags go before the overrides, "
                f"e.g. {parser.prog} ... {name} ... {first}"
            )


def collect_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, stream=None) -> List[str]:
    """The overrides of ``args`` as one list: the bare ``key=value`` words (a leading ``--`` is
    dropped) then those given with ``--opts`` (one deprecation line on ``stream``, stderr by
    default). Raises ConfigError for a flag written after the first override."""
    bare = [o for o in (getattr(args, "opts", None) or []) if o != "--"]
    check_flags_before_overrides(parser, bare)
    old = list(getattr(args, "deprecated_opts", None) or [])
    if old:
        print(
            f"{parser.prog}: --opts is deprecated: write the overrides after the flags, e.g. "
            f"{parser.prog} ... {' '.join(old)}",
            file=stream or sys.stderr,
        )
    return bare + old


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` for a parser given :func:`add_override_arguments`, with
    ``args.opts`` the list of every override (:func:`collect_overrides`). A flag written after
    the first override is one line on stderr, exit 2 (as argparse's own errors)."""
    args = parser.parse_args(argv)
    try:
        args.opts = collect_overrides(parser, args)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    del args.deprecated_opts
    return args
