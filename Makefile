# The two commands of README.md: `make setup` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test selftest benchmark-ops gpu-benchmarks gpu-check gpu-check-rehearse clean

setup:
	VENV=$(VENV) bash tools/setup.sh

test:
	$(PY) -m pytest $(PYTEST_ARGS)

selftest:
	$(PY) -m detrex_lite.selftest

benchmark-ops:
	$(PY) tools/benchmark_ops.py

# On a GPU machine: build for its GPU (+PTX), CUDA op tests, operator and whole-model benchmarks (JSON in benchmarks/)
gpu-benchmarks:
	bash tools/run_gpu_benchmarks.sh benchmarks

# On a fresh GPU machine (no registry): probe, missing wheels, build for its GPU, smoke test, CUDA
# tests, compute-sanitizer, operator and whole-model benchmarks within 480 s; at most 5 files in
# $(GPU_CHECK_OUT), summary.json first (docs/ops.md, "The GPU check"). Wheels from $(WHEELS)
# (tools/fetch_gpu_wheels.sh). gpu-check-rehearse: steps 0-1 on a machine without a GPU.
GPU_CHECK_OUT ?= gpu_check
WHEELS ?= .whl
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash tools/gpu_check.sh $(GPU_CHECK_OUT) $(WHEELS)

gpu-check-rehearse:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash tools/gpu_check.sh $(GPU_CHECK_OUT) $(WHEELS) --rehearse

clean:
	rm -rf build detrex_lite/_C*.so *.egg-info
