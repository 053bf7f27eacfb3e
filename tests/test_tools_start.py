"""Entry points are thin: ``python tools/<tool>.py --help`` answers without importing torch.

Each tool runs in a fresh interpreter with ``-X importtime``, which lists every module the
process imported on stderr; torch must not be among them. Tools are discovered, not listed, so
a new tool is checked without editing this file.
"""
import glob
import os
import subprocess
import sys
from typing import Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_TOOLS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "tools", "*.py")))


def imported_modules(*argv: str) -> Tuple[subprocess.CompletedProcess, Set[str]]:
    """Runs ``python -X importtime ARGV`` in the repository (this checkout first on the path);
    returns the finished process and the names of every module it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    modules = {
        line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    return proc, modules


def test_importtime_lists_torch_when_torch_is_imported():
    # The check below can fail: the same probe sees torch where it is imported.
    proc, modules = imported_modules("-c", "import torch")
    assert proc.returncode == 0 and "torch" in modules


def test_package_and_cli_import_without_torch():
    proc, modules = imported_modules("-c", "import detrex_lite, detrex_lite.cli")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "detrex_lite.cli" in modules and "torch" not in modules


@pytest.mark.parametrize("tool", PY_TOOLS)
def test_help_does_not_import_torch(tool):
    proc, modules = imported_modules(os.path.join("tools", f"{tool}.py"), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "detectron2", "fvcore", "numpy"))
    assert not heavy, f"tools/{tool}.py --help imported {heavy[:5]}"
