"""The bodies that tools share (stdlib only): parse first, then import the work; report a tool's
own errors as one line and an exit status.

A tool parses its arguments before anything imports torch, so that ``--help`` and usage errors
answer at once; only then is the module that does the work imported and called.
"""
import argparse
import importlib
import sys
from typing import Any, Callable, Optional, Sequence, Tuple, Type

__all__ = ["tool_parser", "run_parsed", "exit_status"]


def tool_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """An empty parser for the tool ``prog`` (``"train_net.py"``): ``--help`` prints
    ``description`` and ``epilog`` (the examples) with their line breaks kept."""
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_parsed(
    parse_args: Callable[[Optional[Sequence[str]]], argparse.Namespace],
    target: str,
    argv: Optional[Sequence[str]] = None,
) -> Any:
    """Parses ``argv`` (None: ``sys.argv[1:]``) with ``parse_args``, then imports ``target``,
    written ``"package.module:function"``, and returns ``function(args)``.

    Example (``tools/benchmark.py``)::

        def main(argv=None):
            return run_parsed(parse_benchmark_args, "detrex_lite.benchmark.runner:run_benchmark", argv)
    """
    args = parse_args(argv)
    from .quiet_imports import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)(args)


def exit_status(tool: str, errors: Tuple[Type[BaseException], ...], work: Callable[..., Any], *args, **kwargs) -> int:
    """Runs ``work(*args, **kwargs)``: 0 when it returns; 2 after ``TOOL: error: MESSAGE`` on
    stderr when it raises one of ``errors`` (anything else propagates)."""
    try:
        work(*args, **kwargs)
    except errors as e:
        print(f"{tool}: error: {e}", file=sys.stderr)
        return 2
    return 0
