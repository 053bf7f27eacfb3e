"""Builds detrex_lite and its C++/CUDA extension detrex_lite._C.

The CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled. The CUDA sources
(csrc/cuda/*.cu) are compiled when nvcc is found and either a GPU is visible or FORCE_CUDA=1 is
set; set TORCH_CUDA_ARCH_LIST to choose the architectures (e.g. "8.0;9.0+PTX": "+PTX" adds
portable code that newer GPUs compile at load time). Unset, torch builds for the visible GPU;
with FORCE_CUDA=1 and no visible GPU, DEFAULT_ARCHS below is used (printed). The architectures
compiled in are recorded in the extension (detrex_lite._C.cuda_archs()) so that a GPU the build
does not cover fails with a message saying how to rebuild.
"""
import glob
import os
import re
import subprocess

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"


# TORCH_CUDA_ARCH_LIST when none is set and no GPU is visible (FORCE_CUDA=1), by nvcc major
# version: every data-centre / consumer generation the toolkit supports, ending in +PTX so that a
# GPU newer than the list still runs. CUDA 13 dropped sm_70 (V100): build for it with CUDA 12.x.
DEFAULT_ARCHS = {
    13: "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX",
    12: "7.0;7.5;8.0;8.6;8.9;9.0+PTX",
    11: "7.0;7.5;8.0;8.6+PTX",
}


def _nvcc_version():
    """(major, minor) of $CUDA_HOME/bin/nvcc, or None."""
    try:
        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _choose_arch_list() -> None:
    """Sets TORCH_CUDA_ARCH_LIST when it is unset and no GPU is visible (torch's own default needs
    a GPU and fails with an IndexError), and refuses architectures the toolkit cannot build."""
    version = _nvcc_version()
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        major = version[0] if version else 12
        archs = DEFAULT_ARCHS.get(major, DEFAULT_ARCHS[13] if major > 13 else DEFAULT_ARCHS[11])
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"detrex_lite: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building for {archs} "
              f"(nvcc {'.'.join(map(str, version)) if version else 'version unknown'}); set TORCH_CUDA_ARCH_LIST "
              "to your GPU's compute capability (e.g. 9.0+PTX) for a faster build", flush=True)
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    old = [a for a in re.split(r"[;\s]+", requested) if re.match(r"^\d+\.\d", a) and float(a[:3]) < 7.5]
    if version and version[0] >= 13 and old:
        raise SystemExit(
            f"detrex_lite: nvcc {version[0]}.{version[1]} cannot build for {', '.join(old)} (CUDA 13 supports "
            "compute capability 7.5 and newer). For a V100 (7.0) build with a CUDA 12.x toolkit "
            "(CUDA_HOME=/usr/local/cuda-12.8 ...), or drop those entries from TORCH_CUDA_ARCH_LIST.")


def _cuda_archs() -> str:
    """The code targets nvcc will emit, e.g. "sm_80+sm_90+compute_90" ('+'-separated so that
    the list survives as one preprocessor token sequence)."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags  # same list torch passes to nvcc

    codes = []
    for flag in _get_cuda_arch_flags():
        codes += re.findall(r",code=\[?([\w,]+)\]?", flag)
    names = sorted({name for group in codes for name in group.split(",")})
    return "+".join(names)


def get_extensions():
    csrc = "csrc"
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    # No -std flag: torch.utils.cpp_extension adds the C++ standard its headers need (C++20).
    # at::parallel_for is inlined from torch's headers and uses OpenMP in torch's CPU builds.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]}
    define_macros = []
    extension = CppExtension
    if _want_cuda() and cuda_sources:
        _choose_arch_list()
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None), ("DETREX_LITE_CUDA_ARCHS", _cuda_archs())]
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return [
        extension(
            "detrex_lite._C",
            sources,
            include_dirs=[os.path.join(ROOT, csrc)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="detrex_lite",
    version="0.1.0",
    description="Deformable DETR and DETR on detectron2",
    packages=find_packages(exclude=("tests", "configs", "tools")),
    python_requires=">=3.9",
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
