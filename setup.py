"""Builds detrex_lite and its C++/CUDA extension detrex_lite._C.

The CPU sources (csrc/cpu/*.cpp) are always compiled. The CUDA sources (csrc/cuda/*.cu) are
compiled when nvcc is found and either a GPU is visible or FORCE_CUDA=1 is set; set
TORCH_CUDA_ARCH_LIST to choose the architectures (e.g. "8.0;9.0").
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"


def get_extensions():
    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    extra_compile_args = {"cxx": ["-O3", "-std=c++17"]}
    define_macros = []
    extension = CppExtension
    if _want_cuda() and cuda_sources:
        extension = CUDAExtension
        sources += cuda_sources
        define_macros += [("WITH_CUDA", None)]
        extra_compile_args["nvcc"] = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
    # at::parallel_for uses OpenMP in torch's CPU builds.
    extra_compile_args["cxx"].append("-fopenmp")
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
