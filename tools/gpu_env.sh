#!/usr/bin/env bash
# The Python to use on a machine whose image lacks some of this project's packages and has no
# registry (the lent GPU machine: docs/ops.md, "The GPU check"):
#
#   tools/gpu_env.sh WHEELS_DIR WORK_DIR        -> last line: PY_RUN=<python>
#
# Installs from WHEELS_DIR (tools/fetch_gpu_wheels.sh) only the wheels whose top-level modules do
# not import with PYTHON (default python3, the image's), into WORK_DIR/private, and makes
# WORK_DIR/env, an overlay virtual environment with no packages of its own whose site-packages
# holds two .pth files read in name order at start-up: 00 adds the image's site-packages (with
# their own .pth files), zz the private folder. So the private folder comes AFTER the image's
# packages (a PYTHONPATH entry would come before them and shadow the image's numpy or pytest),
# every process started from the overlay's python sees the same order, and nothing of the image
# is modified. When nothing is missing, PY_RUN is PYTHON itself. Used by tools/gpu_check.sh
# (step 1) and tools/run_gpu_benchmarks.sh.
set -uo pipefail
[ $# -eq 2 ] || { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; }
WHEELS_DIR=$1
WORK=$2
PY=${PYTHON:-python3}
PRIVATE=$WORK/private

if ! compgen -G "$WHEELS_DIR/*.whl" >/dev/null; then
  echo "no wheels in $WHEELS_DIR: the image's packages as they are"
  echo "PY_RUN=$PY"
  exit 0
fi
# The wheels whose top-level modules do not import with the image's packages (from /, so that
# this checkout's own folders do not count).
needed=$(cd / && "$PY" - "$WHEELS_DIR"/*.whl <<'EOF'
import importlib.util
import sys
import zipfile

for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        top = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if top:
            modules = z.read(top[0]).decode().split()
        else:
            modules = {n.split("/")[0].removesuffix(".py") for n in names
                       if not n.split("/")[0].endswith((".dist-info", ".data"))}
    modules = [m for m in modules if m not in ("tools", "tests", "docs")]
    if any(importlib.util.find_spec(m) is None for m in modules):
        print(path)
EOF
) || exit 1
if [ -z "$needed" ]; then
  echo "every wheel in $WHEELS_DIR already imports: nothing installed"
  echo "PY_RUN=$PY"
  exit 0
fi
echo "installing into $PRIVATE:"
printf '  %s\n' $needed
rm -rf "$PRIVATE" "$WORK/env"
mkdir -p "$PRIVATE"
# detectron2 is published tagged cp310 only but is pure Python for detrex_lite (its compiled _C
# is never imported): unpacked. So is everything when the image has no pip.
unpack=$(printf '%s\n' $needed | grep sal_detectron2 || true)
others=$(printf '%s\n' $needed | grep -v sal_detectron2 || true)
if [ -n "$others" ] && "$PY" -m pip --version >/dev/null 2>&1; then
  # shellcheck disable=SC2086  # one argument per wheel
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$PRIVATE" $others || exit 1
else
  unpack="$unpack $others"
fi
for w in $unpack; do "$PY" -m zipfile -e "$w" "$PRIVATE" || exit 1; done
rm -rf "$PRIVATE/tools"  # detectron2's tools/, not ours
# The overlay: a venv of the image's base interpreter, the image's site-packages, then ours.
base=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))') || exit 1
"$base" -m venv --without-pip "$WORK/env" || exit 1
sp=$("$WORK/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 1
"$PY" -c '
import os, sys
for p in sys.path:
    if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p):
        print(f"import site; site.addsitedir({p!r})")' >"$sp/00_image_site_packages.pth" || exit 1
echo "import site; site.addsitedir('$PRIVATE')" >"$sp/zz_detrex_lite_private.pth"
"$WORK/env/bin/python" -c 'import sys; print("sys.path of the overlay:", *sys.path[1:], sep="\n  ")'
echo "PY_RUN=$WORK/env/bin/python"
