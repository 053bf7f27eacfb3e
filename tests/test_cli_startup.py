"""Start-up cost and import-time warnings: ``import detrex_lite`` and the command lines of
train_net / print_config / plot_metrics import no torch (``--help`` answers at once), and
``import_detectron2_quietly`` silences detectron2's ``torch.jit.script`` warning during its own
imports only. Each check runs in a fresh interpreter (this one has imported everything)."""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "torchvision", "detectron2", "fvcore", "numpy")


def _python(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_package_and_command_lines_import_no_torch():
    code = (
        "import sys\n"
        "import detrex_lite, detrex_lite.cli, detrex_lite.errors\n"
        "import detrex_lite.cli.train_net, detrex_lite.cli.print_config, detrex_lite.cli.plot_metrics\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("tool", ["train_net", "print_config", "plot_metrics"])
def test_help_imports_no_torch(tool):
    proc = _python("-X", "importtime", os.path.join("tools", f"{tool}.py"), "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: ")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "detrex_lite" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_quiet_import_silences_only_the_jit_warning_and_only_during_it(tmp_path):
    code = textwrap.dedent(
        """
        import sys, warnings
        from detrex_lite.cli import import_detectron2_quietly

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import_detectron2_quietly()
            during = [str(w.message) for w in caught]
            import torch

            def add_one(x: torch.Tensor) -> torch.Tensor:
                return x + 1

            torch.jit.script(add_one)  # the same warning from other code, afterwards
            warnings.warn("another warning", FutureWarning)
            after = [str(w.message) for w in caught[len(during):]]
        print("loaded", "detectron2.modeling" in sys.modules and "fvcore.nn" in sys.modules)
        print("during", any("torch.jit.script" in m for m in during))
        print("after", any("torch.jit.script" in m for m in after), "another warning" in after)
        """
    )
    script = tmp_path / "quiet_import.py"  # a file: torch.jit.script reads the function's source
    script.write_text(code)
    proc = _python(str(script))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    if lines[2] == "after False True":
        pytest.skip("this torch does not warn about torch.jit.script")
    assert lines == ["loaded True", "during False", "after True True"]
