# Self-contained entry points: each target creates .venv, installs torch and the build
# tools, builds lmkernels into it (incrementally, in build/), then runs.
#   make test      the test suite (what .ci/run calls)
#   make bench     the benchmark suite on CPU (about 10 minutes); BENCH_ARGS=--quick for CI
#   make wheel     a wheel in dist/
# Knobs: PYTHON, VENV, TORCH_SPEC, LMKERNELS_CUDA=AUTO|ON|OFF, PYTEST_ARGS, BENCH_ARGS.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
BUILD_DEPS := scikit-build-core nanobind "cmake>=4" ninja
RUN_DEPS := numpy pytest hypothesis matplotlib tqdm safetensors transformers
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmkernels-deps
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all install test bench wheel clean

all: test

$(STAMP): Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" $(BUILD_DEPS) $(RUN_DEPS)
	touch $@

install: $(STAMP)
	$(PY) -m pip install --no-build-isolation --no-deps .

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: install
	$(PY) -m lmkernels.bench $(BENCH_ARGS)

wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist
