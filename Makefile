# The two commands of README.md: `make setup` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test selftest benchmark-ops gpu-benchmarks gpu-check clean

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

# On a fresh GPU machine (no registry): build for its GPU, CUDA tests, compute-sanitizer, self-test,
# operator and whole-model benchmarks in under 8 minutes; logs and JSON in $(GPU_CHECK_OUT)
# (docs/ops.md, "The GPU check"). Wheels from $(WHEELS) (tools/fetch_gpu_wheels.sh) when present.
GPU_CHECK_OUT ?= gpu_check
WHEELS ?= .whl
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash tools/gpu_check.sh $(GPU_CHECK_OUT) $(WHEELS)

clean:
	rm -rf build detrex_lite/_C*.so *.egg-info
