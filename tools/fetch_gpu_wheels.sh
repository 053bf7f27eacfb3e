#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that tools/gpu_check.sh and
# tools/run_gpu_benchmarks.sh install on a GPU machine that has PyTorch (Python 3.12) but no
# package registry: detectron2 and the dependencies of detrex_lite that such an image lacks,
# pytest, and transformers with its own required dependencies, at the versions installed in this
# project's environment (what the project tests against; for benchmark.py --compare-hf). Run it
# where pip can reach PyPI. PYTHON_VERSION (default 3.12) must match the GPU machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYV=${PYTHON_VERSION:-3.12}
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# transformers and pytest with everything they require, at this environment's versions.
pinned=$("$PY" - <<'EOF'
import importlib.metadata as md
import re

# What the GPU image has with torch (and must not be shadowed) is left out.
SKIP = re.compile(r"^(torch|triton|nvidia-.*|setuptools|pip|wheel)$")
names, todo = set(), ["transformers", "pytest"]
while todo:
    name = todo.pop()
    if name in names or SKIP.match(name):
        continue
    try:
        requirements = md.requires(name) or []
    except md.PackageNotFoundError:  # a requirement whose marker excludes this Python
        continue
    names.add(name)
    for requirement in requirements:
        if "extra ==" not in requirement:
            todo.append(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
print(" ".join(sorted(f"{name}=={md.version(name)}" for name in names)))
EOF
)
echo "pinned from $PY: $pinned"
# shellcheck disable=SC2086  # one argument per requirement
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${plat[@]}" \
  -d .whl $pinned pycocotools==2.0.11 omegaconf==2.3.1 hydra-core==1.3.8 yacs==0.1.8 termcolor==3.3.0
# Tagged cp310 but pure Python for detrex_lite's use (its compiled _C is not imported).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d .whl sal-detectron2==0.7.2
# Published as source only: built here into pure-Python wheels.
"$PY" -m pip wheel -q --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3
ls -l .whl
