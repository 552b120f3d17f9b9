# ppmseg: every target installs what it needs (virtual environments, PyPI packages).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
REF_VENV := .venv-ref
PY := $(VENV)/bin/python
REF_PY := $(REF_VENV)/bin/python
PPMSEG := $(VENV)/bin/ppmseg
REFERENCE_DIR := .cache/reference
MODEL ?= tiny
DEVICE ?= host
UPSAMPLE ?= vim
FRONTEND ?= torch
INPUT ?= 512x512
THREADS ?= 1
BUILD_DIR ?= build/$(MODEL)-$(DEVICE)-$(UPSAMPLE)-$(INPUT)

.PHONY: help setup reference test lint demo info build bench-vim clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

# Debian's python3 lacks venv/ensurepip until python3-venv is installed (as root).
define ENSURE_VENV
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq python3-venv; } || \
		{ echo "error: $(PYTHON) has no venv module; install python3-venv" >&2; exit 1; }
endef

$(VENV)/.installed: pyproject.toml
	$(ENSURE_VENV)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.installed  ## Create .venv with the pinned dependencies

$(REF_VENV)/.installed: tests/reference/requirements.txt
	$(ENSURE_VENV)
	@test -x $(REF_PY) || $(PYTHON) -m venv $(REF_VENV)
	$(REF_PY) -m pip install -q -r tests/reference/requirements.txt
	$(REF_PY) -m pip install -q --no-deps paddleseg==2.8.0
	@touch $@

$(REFERENCE_DIR)/manifest.json: $(REF_VENV)/.installed $(VENV)/.installed tests/reference/generate.py
	$(REF_PY) -W ignore tests/reference/generate.py $(REFERENCE_DIR) \
		--photo "$$($(PY) -c 'from model.image import sample_image_path; print(sample_image_path())')"

reference: $(REFERENCE_DIR)/manifest.json  ## PaddleSeg reference checkpoints and outputs (own venv)

lint: setup  ## ruff
	$(VENV)/bin/ruff check .

test: setup reference lint  ## Lint and run the whole test suite
	PPMSEG_REFERENCE_DIR=$(REFERENCE_DIR) $(VENV)/bin/pytest -q

info: setup  ## Parameters, GFLOPs and stage shapes (MODEL=tiny|base)
	$(PPMSEG) info --model $(MODEL)

demo: setup  ## Segment a real photograph; writes demo/labels.png and demo/overlay.png
	$(PPMSEG) demo --model $(MODEL) -o demo

build: setup  ## Compile: MODEL=tiny|base DEVICE=host UPSAMPLE=vim|interpolate FRONTEND=torch|onnx INPUT=HxW
	$(PPMSEG) compile --model $(MODEL) --device $(DEVICE) --upsample $(UPSAMPLE) --frontend $(FRONTEND) \
		--input-size $(INPUT) -o $(BUILD_DIR)

bench-vim: setup  ## Fused VIM vs unfused vs plain upsample (THREADS=1); writes bench/results/vim.*
	$(PY) -m schedules.vim_bench --threads $(THREADS)

clean:  ## Remove build outputs (keeps the virtual environments)
	rm -rf demo build .cache .pytest_cache .ruff_cache
