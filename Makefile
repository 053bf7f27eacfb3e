# The two commands of README.md: `make setup` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-gpu selftest benchmark-ops clean

setup:
	VENV=$(VENV) bash tools/setup.sh

test:
	$(PY) -m pytest $(PYTEST_ARGS)

selftest:
	$(PY) -m detrex_lite.selftest

benchmark-ops:
	$(PY) tools/benchmark_ops.py

clean:
	rm -rf build detrex_lite/_C*.so *.egg-info
