#!/usr/bin/env bash
# Downloads into DIR (default .whl/, git-ignored) the wheels of the packages that the lent GPU
# machine's image lacks and tools/gpu_check.sh installs there (it has no package registry):
#
#   tools/fetch_gpu_wheels.sh [DIR]
#
# The image (docs/ops.md, "The GPU check") has Python 3.12, torch 2.11.0, numpy, pytest,
# transformers, scipy, opencv, matplotlib, tensorboard, PyYAML, tqdm, tabulate, cloudpickle,
# portalocker and Pillow; of this project's requirements it lacks the nine below, and torchvision
# is not known to be there (detectron2 imports it; gpu_check.sh installs it only when it does not
# import). Nothing the image has is downloaded (a second numpy or pytest would shadow the image's
# own). Versions are those of this project's environment (PYTHON, default .venv/bin/python),
# torchvision the one built for the image's torch (TORCH_VERSION, default 2.11.0: torch 2.x.y
# pairs with torchvision 0.(x+15).y; TORCHVISION_VERSION overrides); wheels are for CPython
# PYTHON_VERSION (default 3.12, the image's), manylinux x86-64. Needs pip and a registry.
# Fails when the folder would exceed 15 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
PYV=${PYTHON_VERSION:-3.12}
TORCH_VERSION=${TORCH_VERSION:-2.11.0}
MAX_MB=15
if [ -z "${TORCHVISION_VERSION:-}" ]; then
  IFS=. read -r major minor patch <<<"${TORCH_VERSION%%+*}"
  [ "$major" = 2 ] || { echo "fetch_gpu_wheels: set TORCHVISION_VERSION for torch $TORCH_VERSION" >&2; exit 2; }
  TORCHVISION_VERSION=0.$((minor + 15)).${patch:-0}
fi
# What the image lacks: distribution names (detectron2 is published as sal-detectron2).
BINARY="pycocotools omegaconf hydra-core yacs termcolor"
SOURCE_ONLY="fvcore iopath antlr4-python3-runtime"  # published as source: built here (pure Python)
DETECTRON2=sal-detectron2                           # tagged cp310 only; pure Python for detrex_lite

pins() {  # name==version of each argument, from $PY's environment
  "$PY" - "$@" <<'EOF'
import importlib.metadata as md
import sys

out = []
for name in sys.argv[1:]:
    try:
        out.append(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        sys.exit(f"fetch_gpu_wheels: {name} is not installed in {sys.executable}: run make setup first")
print(" ".join(out))
EOF
}

mkdir -p "$DIR"
# shellcheck disable=SC2046,SC2086  # one argument per requirement
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" $(pins $BINARY) "torchvision==$TORCHVISION_VERSION"
# Only cp310 wheels exist; tools/gpu_check.sh unpacks it (its compiled _C is never imported).
# shellcheck disable=SC2046
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" $(pins $DETECTRON2)
# shellcheck disable=SC2046,SC2086
"$PY" -m pip wheel -q --no-deps -w "$DIR" $(pins $SOURCE_ONLY)
ls -l "$DIR"
kb=$(du -sk "$DIR" | cut -f1)
if [ "$kb" -gt $((MAX_MB * 1024)) ]; then
  echo "fetch_gpu_wheels: $DIR holds $((kb / 1024)) MB, more than $MAX_MB MB: something besides the missing packages is there" >&2
  exit 1
fi
echo "fetch_gpu_wheels: $(ls "$DIR"/*.whl | wc -l) wheels, $((kb / 1024)) MB in $DIR"
