#!/usr/bin/env bash
# One GPU check of detrex_lite, planned for under 8 minutes on an H100/H200 (docs/ops.md,
# "The GPU check"), for a fresh GPU machine with Python and torch installed and no package
# registry:
#
#   tools/gpu_check.sh OUTDIR [WHEELS_DIR]        (or: make gpu-check OUT=OUTDIR)
#
#   0. installs the wheels of WHEELS_DIR (default .whl/, filled by tools/fetch_gpu_wheels.sh on a
#      networked machine) into a private folder put on PYTHONPATH, when there are any
#   1. prints nvidia-smi and the Python / torch / CUDA / nvcc versions         -> versions.txt
#   2. builds detrex_lite._C for the present GPU only (its compute capability)  -> build.log
#   3. the CUDA operator tests with CUDA_LAUNCH_BLOCKING=1; stops at the first failure
#                                                                               -> cuda_tests.log/.xml
#   4. compute-sanitizer memcheck and synccheck on one small forward + backward (when present)
#                                                                               -> sanitizer_*.log
#   5. the full self-test                                                        -> selftest.txt
#   6. tools/benchmark_ops.py E1, E2, D1 in float32 and bfloat16, 20 repeats     -> ops_cuda.json
#   7. tools/benchmark.py Deformable DETR R50 inference at 800x1333, batch 1 and 4, fp32 and
#      bf16 autocast, against transformers                                       -> model_cuda.json
#
# Everything is also logged to OUTDIR/gpu_check.log; OUTDIR/summary.txt has one line per step.
# Exit status: 0 all passed, 1 a step failed, 2 no GPU (or no torch with CUDA) on this machine.
# Environment: PYTHON (default python3), SITE_DIR (where wheels go, default /tmp/detrex_lite_site),
# CUDA_HOME (guessed from nvcc), MAX_JOBS (default: all cores).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
OUT_DIR=$1
WHEELS_DIR=${2:-.whl}
PY=${PYTHON:-python3}
SITE_DIR=${SITE_DIR:-/tmp/detrex_lite_site}
mkdir -p "$OUT_DIR" && OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/summary.txt"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0

step() { printf '\n==> [%4d s] %s\n' "$SECONDS" "$*"; }
record() { printf '%-28s %-6s %4d s  %s\n' "$1" "$2" "$SECONDS" "${3:-}" | tee -a "$OUT_DIR/summary.txt"; }
finish() {
  step "done: exit $1 after $SECONDS s (summary in $OUT_DIR/summary.txt)"
  cat "$OUT_DIR/summary.txt"
  exit "$1"
}

# ---- 0. a GPU? -----------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi missing or failing): this check needs one." >&2
  record "gpu" "FAIL" "no NVIDIA GPU (nvidia-smi)"
  finish 2
fi

# ---- wheels --------------------------------------------------------------------------------
if compgen -G "$WHEELS_DIR/*.whl" >/dev/null; then
  step "wheels from $WHEELS_DIR -> $SITE_DIR"
  mkdir -p "$SITE_DIR"
  # sal-detectron2 is tagged cp310 but is pure Python for detrex_lite (its _C is not used): unpacked.
  others=$(ls "$WHEELS_DIR"/*.whl | grep -v sal_detectron2 || true)
  if [ -n "$others" ] && ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE_DIR" $others; then
    record "wheels" "FAIL" "pip install from $WHEELS_DIR"
    finish 1
  fi
  for w in "$WHEELS_DIR"/sal_detectron2-*.whl; do [ -f "$w" ] && "$PY" -m zipfile -e "$w" "$SITE_DIR"; done
  rm -rf "$SITE_DIR/tools"  # detectron2's tools/, not ours
  export PYTHONPATH=$SITE_DIR:$PWD${PYTHONPATH:+:$PYTHONPATH}
  record "wheels" "ok" "$(ls "$WHEELS_DIR"/*.whl | wc -l) wheels"
else
  echo "no wheels in $WHEELS_DIR: using the installed packages"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# ---- 1. versions ---------------------------------------------------------------------------
step "GPU and versions"
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  # nvcc may be a wrapper: ask it where its toolkit lives (torch would guess wrong).
  top=$(cd /tmp && nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  if [ -n "$top" ] && [ -d "$top" ]; then CUDA_HOME=$(cd "$top" && pwd -P)
  else CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
fi
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && CUDA_HOME=/usr/local/cuda
export CUDA_HOME=${CUDA_HOME:-}
{
  nvidia-smi
  echo "CUDA_HOME=${CUDA_HOME:-unset}"
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then "$CUDA_HOME/bin/nvcc" --version | tail -2
  else echo "nvcc: not found"; fi
  "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs; {torch.cuda.device_count()} GPU(s)")
for name in ("pytest", "numpy", "transformers", "detectron2", "fvcore", "omegaconf", "pycocotools"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001  (report any import failure)
        print(f"{name}: MISSING ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee "$OUT_DIR/versions.txt"
cap=$("$PY" -c "import torch; assert torch.cuda.is_available(); \
print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
if [ -z "$cap" ]; then
  echo "gpu_check: torch sees no CUDA GPU (torch.cuda.is_available() is False): this check needs one." >&2
  record "versions" "FAIL" "torch.cuda.is_available() is False"
  finish 2
fi
record "versions" "ok" "compute capability $cap"

# ---- 2. build for this GPU -----------------------------------------------------------------
step "build detrex_lite._C for compute capability $cap only (MAX_JOBS=$MAX_JOBS)"
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  record "build" "FAIL" "no nvcc (set CUDA_HOME to the CUDA toolkit)"
  finish 1
fi
start=$SECONDS
if ! TORCH_CUDA_ARCH_LIST="$cap" FORCE_CUDA=1 "$PY" setup.py build_ext --inplace >"$OUT_DIR/build.log" 2>&1; then
  tail -30 "$OUT_DIR/build.log"
  record "build" "FAIL" "see build.log"
  finish 1
fi
want="sm_${cap/./}"
if ! "$PY" -c "from detrex_lite.layers.ms_deform_attn_function import extension_info as i; import sys; \
print(i()); sys.exit(0 if '$want' in i()['cuda_archs'] else 1)"; then
  record "build" "FAIL" "the built extension has no $want kernels"
  finish 1
fi
record "build" "ok" "$want in $((SECONDS - start)) s"

# ---- 3. CUDA tests, fail fast --------------------------------------------------------------
step "CUDA operator tests (CUDA_LAUNCH_BLOCKING=1, stop at the first failure)"
if CUDA_LAUNCH_BLOCKING=1 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_ms_deform_attn_cuda.py \
    --junitxml "$OUT_DIR/cuda_tests.xml" 2>&1 | tee "$OUT_DIR/cuda_tests.log"; then
  record "cuda tests" "ok" "$(tail -1 "$OUT_DIR/cuda_tests.log")"
else
  record "cuda tests" "FAIL" "$(tail -1 "$OUT_DIR/cuda_tests.log")"
  finish 1
fi

# ---- 4. compute-sanitizer ------------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x "$CUDA_HOME/bin/compute-sanitizer" ] && sanitizer=$CUDA_HOME/bin/compute-sanitizer
if [ -n "$sanitizer" ]; then
  cat >"$OUT_DIR/sanitizer_case.py" <<'EOF'
# One small forward + backward of the model's kernel instance (L = P = 4, D = 32, M = 8), float32
# and bfloat16, and a layout that disagrees with value (the kernels' bounds test must hold).
import torch
from detrex_lite.layers.ms_deform_attn_function import ms_deform_attn

torch.manual_seed(0)
levels = [(8, 10), (4, 5), (2, 3), (1, 1)]
shapes = torch.tensor(levels, device="cuda")
starts = torch.tensor([0, 80, 100, 106], device="cuda")
for dtype in (torch.float32, torch.bfloat16):
    value = torch.randn(2, 107, 8, 32, device="cuda").to(dtype).requires_grad_()
    loc = (torch.rand(2, 40, 8, 4, 4, 2, device="cuda") * 1.1 - 0.05).requires_grad_()
    attn = torch.rand(2, 40, 8, 4, 4, device="cuda").requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    torch.autograd.grad(out.float().sum(), (value, loc, attn))
bad = torch.tensor([[8, 10], [400, 500], [2, 3], [1, 1]], device="cuda")
try:
    torch.ops.detrex_lite.ms_deform_attn_forward(value.detach(), bad, starts, loc.detach(), attn.detach(), 64)
    raise SystemExit("an inconsistent layout was accepted")
except RuntimeError as e:
    print("inconsistent layout refused:", str(e).splitlines()[0])
torch.cuda.synchronize()
print("sanitizer case done")
EOF
  for tool in memcheck synccheck; do
    step "compute-sanitizer --tool $tool (one small forward + backward)"
    # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
    if PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 240 "$sanitizer" --tool "$tool" --error-exitcode 3 \
        --print-limit 20 "$PY" "$OUT_DIR/sanitizer_case.py" >"$OUT_DIR/sanitizer_$tool.log" 2>&1; then
      record "sanitizer $tool" "ok" "$(grep -m1 'ERROR SUMMARY' "$OUT_DIR/sanitizer_$tool.log")"
    else
      tail -20 "$OUT_DIR/sanitizer_$tool.log"
      record "sanitizer $tool" "FAIL" "see sanitizer_$tool.log"
      status=1
    fi
  done
else
  record "sanitizer" "skip" "compute-sanitizer not found"
fi

# ---- 5. self-test --------------------------------------------------------------------------
step "self-test (full)"
if "$PY" -m detrex_lite.selftest 2>&1 | tee "$OUT_DIR/selftest.txt"; then
  record "selftest" "ok" "$(tail -1 "$OUT_DIR/selftest.txt")"
else
  record "selftest" "FAIL" "$(tail -1 "$OUT_DIR/selftest.txt")"
  status=1
fi

# ---- 6. operator benchmark -----------------------------------------------------------------
step "benchmark_ops: E1, E2, D1 in float32 and bfloat16, 20 repeats"
if "$PY" tools/benchmark_ops.py --device cuda --shapes E1,E2,D1 --dtypes float32,bfloat16 --repeats 20 \
    --warmup 5 --out "$OUT_DIR/ops_cuda.json" 2>&1 | tee "$OUT_DIR/ops_cuda.txt"; then
  record "benchmark_ops" "ok" "ops_cuda.json"
else
  record "benchmark_ops" "FAIL" "see ops_cuda.txt"
  status=1
fi

# ---- 7. whole model vs transformers --------------------------------------------------------
step "benchmark.py: Deformable DETR R50 inference, batch 1 and 4, fp32 and bf16, vs transformers"
if "$PY" tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
    --device cuda --image-size 800 1333 --batch-sizes 1 4 --modes inference --precisions fp32 amp \
    --amp-dtype bfloat16 --iters 20 --warmup 5 --compare-hf --json "$OUT_DIR/model_cuda.json" 2>&1 |
    tee "$OUT_DIR/model_cuda.txt"; then
  record "benchmark.py" "ok" "model_cuda.json"
else
  record "benchmark.py" "FAIL" "see model_cuda.txt"
  status=1
fi

finish $status
