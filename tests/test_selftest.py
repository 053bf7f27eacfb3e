"""`python -m detrex_lite.selftest --quick`: the table covers the model's kernel instance, D = 48 and
64, a misaligned view, every dtype of the contract, and passes on this machine."""
import pytest

from detrex_lite import selftest
from detrex_lite.layers import ms_deform_attn_function as msda


def test_selftest_plan_covers_cases_dtypes_and_cuda_kernels(monkeypatch):
    monkeypatch.setattr(msda, "_KERNEL_DEVICES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(selftest, "extension_available", msda.extension_available)
    if not msda.extension_available("cpu"):
        pytest.skip("detrex_lite._C is not built")
    cuda = selftest._plan("cuda")
    native = {(case, kernel, dtypes) for case, kernel, dtypes, impl in cuda if impl == "native"}
    assert native == {(c, k, d) for c in selftest.CASES for k in selftest.CUDA_KERNELS for d in selftest.DTYPES}
    assert set(selftest.CASES) == {"L4P4_D32_M8", "D48", "D64", "misaligned"}


@pytest.mark.skipif(not msda.extension_available("cpu"), reason="detrex_lite._C is not built")
def test_selftest_quick_passes_on_cpu(capsys):
    assert selftest.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "selftest: passed" in out and "L4P4_D32_M8" in out and "misaligned" in out and "bfloat16" in out
