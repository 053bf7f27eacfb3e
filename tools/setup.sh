#!/usr/bin/env bash
# One-shot set-up: a virtual environment with torch + torchvision, detectron2, the runtime and
# test dependencies, then this project in editable mode (which compiles detrex_lite._C).
#
# Environment variables (all optional):
#   VENV                  where to create the environment (default: .venv in the repository)
#   PYTHON                interpreter used to create it (default: python3)
#   DETECTRON2_SOURCE     pypi (default): the sal-detectron2 wheel, a redistribution of upstream
#                         detectron2 0.7.2; git: build upstream detectron2 from GitHub;
#                         or a path to a local detectron2 checkout (built from source).
#   FORCE_CUDA=1          compile the CUDA kernels even when no GPU is visible (needs nvcc)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (e.g. "8.0;9.0+PTX"; unset: the visible
#                         GPU, or with FORCE_CUDA=1 and no GPU a default list ending in +PTX)
#   CUDA_HOME             CUDA toolkit root; guessed from nvcc when unset
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DETECTRON2_SOURCE=${DETECTRON2_SOURCE:-pypi}

step() { printf '\n==> %s\n' "$*"; }

step "virtual environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel installer

step "torch + torchvision (installed together so that their builds match)"
"$PY" -m pip install -q torch torchvision

step "detectron2 ($DETECTRON2_SOURCE)"
case "$DETECTRON2_SOURCE" in
  pypi)
    if ! "$PY" -m pip show -q sal-detectron2 >/dev/null 2>&1; then
      tmp=$(mktemp -d)
      # The wheel is tagged cp310 but its Python code runs on 3.10-3.12; its compiled _C is not
      # used by detrex_lite, so it is installed without the tag check.
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
        sal-detectron2==0.7.2 -d "$tmp"
      "$PY" -m installer "$tmp"/sal_detectron2-*.whl
      rm -rf "$tmp"
    fi
    ;;
  git)
    "$PY" -m pip install -q --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
    ;;
  *)
    [ -d "$DETECTRON2_SOURCE" ] || { echo "DETECTRON2_SOURCE=$DETECTRON2_SOURCE: not pypi, git or a directory" >&2; exit 2; }
    "$PY" -m pip install -q --no-build-isolation -e "$DETECTRON2_SOURCE"
    ;;
esac

step "runtime and test dependencies"
"$PY" -m pip install -q -r requirements.txt

if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  # `nvcc` may be a wrapper script (torch then guesses CUDA_HOME wrong and linking fails with
  # "cannot find -lcudart"): ask nvcc itself where its toolkit lives.
  top=$(cd /tmp && nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  if [ -n "$top" ] && [ -d "$top" ]; then
    CUDA_HOME=$(cd "$top" && pwd -P)
  else
    CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  fi
  export CUDA_HOME
fi
[ -n "${CUDA_HOME:-}" ] && echo "CUDA_HOME=$CUDA_HOME"

step "detrex_lite (editable; compiles detrex_lite._C)"
"$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -m detrex_lite.selftest --quick || true
echo
echo "Set-up done. Activate with: source $VENV/bin/activate"
