"""`python -m detrex_lite.selftest --quick`: the table covers the model's kernel instance, D = 48 and
64, a misaligned view, every dtype of the contract, and passes on this machine."""
import pytest

from detrex_lite import selftest
from detrex_lite.layers import ms_deform_attn_function as msda


class _WithCuda:
    """What the plan reads of a CUDA build of the extension."""

    with_cuda = staticmethod(lambda: True)


def test_selftest_plan_covers_cases_dtypes_and_cuda_kernels():
    cuda = selftest._plan("cuda", msda.OpExtension(_WithCuda()))
    native = {(case, kernel, dtypes) for case, kernel, dtypes, impl in cuda if impl == "native"}
    assert native == {(c, k, d) for c in selftest.CASES for k in selftest.CUDA_KERNELS for d in selftest.DTYPES}
    assert set(selftest.CASES) == {"L4P4_D32_M8", "D48", "D64", "misaligned"}


@pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")
def test_selftest_quick_passes_on_cpu(capsys):
    assert selftest.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "selftest: passed" in out and "L4P4_D32_M8" in out and "misaligned" in out and "bfloat16" in out


@pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")
def test_smoke_passes_on_cpu(capsys):
    """--smoke (tools/gpu_check.sh step 3): the raw op and the model's LevelLayout path in float32
    and bfloat16, and an out-of-range layout refused (on a GPU also with a device-resident layout
    and a host-sync count)."""
    assert selftest.main(["--smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "smoke: passed (5/5 rows passed on cpu)" in out
    assert "model (LevelLayout)" in out and "out-of-range layout" in out and "bfloat16+float32 loc" in out


def test_smoke_rows_fail_when_a_check_fails(monkeypatch):
    """A row is not PASS by construction: a wrong result or an accepted bad layout fails it."""
    monkeypatch.setattr(selftest, "check", lambda *a, **k: (1.0, 1.0, False))
    monkeypatch.setattr(selftest, "_bad_layout_refused", lambda *a: "an out-of-range layout was accepted")
    rows = selftest.smoke("cpu")
    assert rows and all(r[-1].startswith("FAIL") for r in rows)
