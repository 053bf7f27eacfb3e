#!/usr/bin/env bash
# The speed issue's GPU numbers in one go, on a machine with an NVIDIA GPU (docs/tools.md,
# "Running the GPU benchmarks"):
#   1. install the wheels carried in .whl/ that the image lacks (tools/fetch_gpu_wheels.sh), after the
#      image's own packages (tools/gpu_env.sh)
#   2. build detrex_lite._C with CUDA kernels for $TORCH_CUDA_ARCH_LIST (default: this GPU's
#      compute capability + PTX, e.g. 9.0+PTX on H100/H200), unless a build with CUDA kernels for
#      this GPU is already there
#   3. the CUDA operator tests and the self-test
#   4. tools/benchmark_ops.py: every shape, fp32/fp16/bf16, 100 timed runs   -> ops_cuda.json
#      and E1/D1/R_D48 with each CUDA kernel instance (--cuda-kernels)    -> ops_cuda_kernels.json
#   5. tools/benchmark.py --compare-hf: Deformable DETR R50 at 800x1333 vs transformers, fp32 and
#      bf16 AMP, inference batch 1 and 4, training batch 2                     -> model_cuda.json
# Results go to $1 (default benchmarks/) and, when $OUT is set, are copied there with the log
# (4 files: gpu_benchmarks.log, ops_cuda.json, ops_cuda_kernels.json, model_cuda.json).
# STAGES="build test ops model" selects stages (e.g. STAGES="ops model" on a warm machine).
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${1:-benchmarks}
PY=${PYTHON:-python3}
STAGES=${STAGES:-"build test ops model"}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
  # This GPU, plus PTX so that the build also runs on newer GPUs.
  TORCH_CUDA_ARCH_LIST="${cap:-9.0}+PTX"
fi
export TORCH_CUDA_ARCH_LIST
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
mkdir -p "$RESULTS"
LOG=${OUT:-$RESULTS}/gpu_benchmarks.log
exec > >(tee -a "$LOG") 2>&1
status=0
step() { printf '\n==> [%s s] %s\n' "$SECONDS" "$*"; }
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
save() { [ -n "${OUT:-}" ] && [ -f "$1" ] && cp "$1" "$OUT/"; return 0; }

# The wheels the image lacks (.whl/, tools/fetch_gpu_wheels.sh), installed after its own packages
# (tools/gpu_env.sh, in the folder that tools/gpu_check.sh uses).
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/detrex_lite_gpu_check}
PY=$(PYTHON=$PY bash tools/gpu_env.sh .whl "$WORK" | sed -n 's/^PY_RUN=//p' | tail -1)
[ -n "$PY" ] || exit 1
export PYTHONPATH=$PWD
"$PY" -c "import torch, transformers, detectron2; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'|', torch.cuda.get_device_name(), '| transformers', transformers.__version__)" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv || true

if has_stage build; then
  first=${TORCH_CUDA_ARCH_LIST%%;*}
  want="sm_$(echo "${first%%+*}" | tr -d '.')"
  if "$PY" -c "from detrex_lite.layers.ms_deform_attn_function import extension_info as i; import sys; \
sys.exit(0 if '$want' in i()['cuda_archs'] else 1)" 2>/dev/null; then
    step "detrex_lite._C already has $want kernels: not rebuilt"
  else
    step "build detrex_lite._C for $TORCH_CUDA_ARCH_LIST (FORCE_CUDA=1)"
    if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
      top=$(cd /tmp && nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
      CUDA_HOME=$( [ -n "$top" ] && cd "$top" && pwd -P || dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
      export CUDA_HOME
    fi
    echo "CUDA_HOME=${CUDA_HOME:-unset}"
    FORCE_CUDA=1 "$PY" setup.py -q build_ext --inplace || exit 1
  fi
  "$PY" -c "from detrex_lite.layers.ms_deform_attn_function import extension_info; print(extension_info())"
fi

if has_stage test; then
  step "CUDA operator tests and self-test"
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_ms_deform_attn_cuda.py --maxfail=3 || status=1
  "$PY" -m detrex_lite.selftest --quick || status=1
fi

if has_stage ops; then
  step "operator benchmark (benchmark_ops.py)"
  "$PY" tools/benchmark_ops.py --device cuda --dtypes float32,float16,bfloat16 --shapes all \
    --repeats 100 --warmup 10 --out "$RESULTS/ops_cuda.json" || status=1
  save "$RESULTS/ops_cuda.json"
  step "CUDA kernel instances side by side (benchmark_ops.py --cuda-kernels)"
  # What each technique buys: auto vs the generic L/P loop vs 1-element packs.
  "$PY" tools/benchmark_ops.py --device cuda --dtypes float32,bfloat16 --shapes E1,D1,R_D48 \
    --cuda-kernels auto,generic,scalar --repeats 100 --warmup 10 --out "$RESULTS/ops_cuda_kernels.json" || status=1
  save "$RESULTS/ops_cuda_kernels.json"
fi

if has_stage model; then
  step "whole model vs transformers (benchmark.py --compare-hf)"
  "$PY" tools/benchmark.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
    --device cuda --image-size 800 1333 --batch-sizes 1 4 --train-batch-size 2 --precisions fp32 amp \
    --amp-dtype bfloat16 --iters 20 --warmup 5 --compare-hf --json "$RESULTS/model_cuda.json" || status=1
  save "$RESULTS/model_cuda.json"
fi
step "done (status $status)"
exit $status
