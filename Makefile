# The two commands of README.md: `make setup` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test selftest benchmark-ops gpu-benchmarks clean

setup:
	VENV=$(VENV) bash tools/setup.sh

test:
	$(PY) -m pytest $(PYTEST_ARGS)

selftest:
	$(PY) -m detrex_lite.selftest

benchmark-ops:
	$(PY) tools/benchmark_ops.py

# On a GPU machine: build for sm_90, CUDA op tests, operator and whole-model benchmarks (JSON in benchmarks/)
gpu-benchmarks:
	bash tools/run_gpu_benchmarks.sh benchmarks

clean:
	rm -rf build detrex_lite/_C*.so *.egg-info
