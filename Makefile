# AerialSeg: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
STAMP := $(VENV)/.aerialseg-installed
PYTEST_ARGS ?=
# Test worker processes (pytest-xdist), one per core of a 2-core machine; 0 runs in this process.
TEST_WORKERS ?= 2

.PHONY: help install demo test lint format pytest bench mutation clean

help:
	@echo "make demo     install (first run only), then run the end-to-end demo on CPU"
	@echo "make test     install (first run only), then lint + the whole test suite with coverage"
	@echo "make install  create $(VENV) and install everything (idempotent)"
	@echo "make format   apply ruff formatting and autofixes"
	@echo "make bench    run the CPU benchmarks in benchmarks/"
	@echo "make mutation mutation testing (mutmut) of the core modules, each against its own tests"

install: $(STAMP)

$(STAMP): setup.py pyproject.toml requirements/*.txt
	@echo "==> [1/7] virtual environment in $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/7] PyTorch 2.13 + torchvision 0.28 from PyPI (CUDA build; runs on CPU; ~5 GB)"
	@# find-links would offer a CPU-only torch that has no matching torchvision: switch it off here.
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PIP) install -r requirements/torch.txt
	@echo "==> [3/7] build tools for mmcv"
	$(PIP) install -r requirements/build.txt
	@echo "==> [4/7] mmcv 2.1.0 with C++ ops, built from source: this takes ~8 minutes on 2 cores the"
	@echo "          first time (pip caches the wheel afterwards)"
	MMCV_WITH_OPS=1 FORCE_CUDA=$${FORCE_CUDA:-0} MAX_JOBS=$${MAX_JOBS:-2} \
		$(PIP) install --no-build-isolation -r requirements/mmcv.txt
	@echo "==> [5/7] OpenMMLab, segment-anything, transformers, peft, bitsandbytes, openai, test tools"
	$(PIP) install -r requirements/runtime.txt -r requirements/tests.txt
	@echo "==> [6/7] SAM 2 (sam2 1.1.0 and hydra) built from its sdist against the installed torch,"
	@echo "          without its optional CUDA extension"
	SAM2_BUILD_CUDA=0 $(PIP) install --no-build-isolation -r requirements/sam2.txt
	@echo "==> [7/7] aerialseg, datagen and llm (editable) and the browser used by the web-page tests"
	$(PIP) install --no-deps --no-build-isolation -e .
	@bash .ci/install-browser.sh
	$(BIN)/python -c "import aerialseg, mmseg, mmcv.ops, sam2.build_sam; print('aerialseg', aerialseg.__version__, 'ready')"
	@touch $(STAMP)

demo: install
	$(BIN)/aerialseg demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

pytest: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --cov --cov-report=term $(PYTEST_ARGS)

test: lint pytest

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	@for script in benchmarks/*_bench.py; do echo "==> $$script"; $(BIN)/python $$script || exit 1; done

# Not part of `make test` (slow). MUTATION_ARGS: module names, --fresh, --max-children N.
MUTATION_ARGS ?=
mutation: install
	nice -n 19 $(BIN)/python tools/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf work_dirs .pytest_cache .coverage htmlcov
