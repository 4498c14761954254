# Self-contained entry points: each target creates .venv, installs torch and the build
# tools, builds lmkernels into it (incrementally, in build/), then runs.
#   make test      the test suite (what .ci/run calls)
#   make bench     the benchmark suite on CPU (about 10 minutes); BENCH_ARGS=--quick for CI
#   make wheel     a wheel in dist/
#   make sanitize  the test suite against an ASan + UBSan build (CPU sources)
#   make fuzz      the fuzz tests with many cases per op (FUZZ_EXAMPLES, default 2000)
#   make corpora   text corpora from Debian packages into data/corpora (apt-get, see README)
#   make reference-models   train the reference models into data/models (CPU, ~20 min each)
# Knobs: PYTHON, VENV, TORCH_SPEC, LMKERNELS_CUDA=AUTO|ON|OFF, PYTEST_ARGS, BENCH_ARGS.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
BUILD_DEPS := scikit-build-core nanobind "cmake>=4" ninja
RUN_DEPS := numpy pytest hypothesis matplotlib tqdm safetensors transformers torchrl
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lmkernels-deps
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all install test bench wheel sanitize fuzz clean corpora reference-models

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

DATA_DIR ?= data
corpora: install
	$(PY) -m lmkernels.data build-corpora $(DATA_DIR)/corpora

reference-models: corpora
	$(PY) -m lmkernels.data train-reference --corpora $(DATA_DIR)/corpora --out $(DATA_DIR)/models/small-en \
		--preset small --sources en pydoc
	# Context 2560 for the chunk-cache RAG bench (5 chunks of up to 508 tokens + a question).
	$(PY) -m lmkernels.data train-reference --corpora $(DATA_DIR)/corpora --out $(DATA_DIR)/models/small-en-long \
		--preset small --sources en --context 2560 --batch 2 --minutes 18

wheel: $(STAMP)
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# The sanitizer build goes to its own folder and is put first on PYTHONPATH; the interpreter
# is not instrumented, so the ASan runtime is preloaded and leak detection (which would
# report the interpreter's own allocations) is off. UBSan stays fatal. --capture=sys keeps
# the sanitizer report (written to fd 2) visible when it aborts the process. libstdc++ is
# preloaded too, else ASan cannot intercept __cxa_throw (python is not a C++ program).
SANITIZE_SITE := build/sanitize-site
sanitize: $(STAMP)
	LMKERNELS_CUDA=OFF LMKERNELS_SANITIZE=ON $(PY) -m pip install --no-build-isolation --no-deps \
		--upgrade --target $(SANITIZE_SITE) -C build-dir=build/sanitize .
	@# triton's bundled LLVM aborts at load under ASan; torch and transformers treat it as absent.
	mkdir -p $(SANITIZE_SITE)/triton && echo 'raise ImportError("triton is hidden under the sanitizer build")' \
		> $(SANITIZE_SITE)/triton/__init__.py
	PYTHONPATH=$(SANITIZE_SITE) LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0:protect_shadow_gap=0:abort_on_error=1 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(PY) -m pytest tests -p no:cacheprovider --capture=sys $(PYTEST_ARGS)

FUZZ_EXAMPLES ?= 2000
fuzz: install
	LMKERNELS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf build dist
