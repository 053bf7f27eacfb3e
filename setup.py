"""Builds detrex_lite and its C++/CUDA extension detrex_lite._C.

The CPU sources (csrc/*.cpp, csrc/cpu/*.cpp) are always compiled. The CUDA sources
(csrc/cuda/*.cu) are compiled when nvcc is found and either a GPU is visible or FORCE_CUDA=1 is
set; set TORCH_CUDA_ARCH_LIST to choose the architectures (e.g. "8.0;9.0"). The architectures
compiled in are recorded in the extension (detrex_lite._C.cuda_archs()) so that a GPU the build
does not cover fails with a message saying how to rebuild.
"""
import glob
import os
import re

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"


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
