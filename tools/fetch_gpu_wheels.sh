#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that tools/run_gpu_benchmarks.sh installs on a
# GPU machine that has PyTorch (Python 3.12) but no package registry: detectron2 and the
# dependencies of detrex_lite that such an image lacks, and transformers at the version this
# project tests against (for benchmark.py --compare-hf). Run it where pip can reach PyPI.
# About 21 MB. PYTHON_VERSION (default 3.12) must match the GPU machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYV=${PYTHON_VERSION:-3.12}
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${plat[@]}" \
  -d .whl transformers==5.23.0 pycocotools==2.0.11 omegaconf==2.3.1 hydra-core==1.3.8 yacs==0.1.8 termcolor==3.3.0
# Tagged cp310 but pure Python for detrex_lite's use (its compiled _C is not imported).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d .whl sal-detectron2==0.7.2
# Published as source only: built here into pure-Python wheels.
"$PY" -m pip wheel -q --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3
ls -l .whl
