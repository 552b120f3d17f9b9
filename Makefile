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
TRIALS ?=
UPSAMPLE ?= vim
LAYOUT ?= blocked
FUSE ?=
SEARCH ?=
FROM_SCRATCH ?=
FRONTEND ?= torch
INPUT ?= 512x512
THREADS ?= 1
TEST_WORKERS ?= 2
BUILD_DIR ?= build/$(MODEL)-$(DEVICE)-$(UPSAMPLE)-$(INPUT)

RUNNER := build/ppmseg-run
# FUSE=on|off: --fuse / --no-fuse; unset: the shipped default.
FUSE_ARG = $(if $(filter on,$(FUSE)),--fuse,$(if $(filter off,$(FUSE)),--no-fuse))
SERVERS ?= 1

.PHONY: help setup bench-setup reference test lint demo info build bench-vim bench tune tracker emulator host-server emulator-server \
	devices tracker-stop runner runner-aarch64 bundle clean

help:  ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

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

# The peer benchmark's engines that live in .venv (pyproject's `bench` extra); the others'
# environments (.venv-<name>, pipeline/bench/envs/<name>.txt) are created on first use.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

bench-setup: $(VENV)/.installed-bench  ## The peer benchmark's engines: .venv's extra, then every .venv-<name>
	$(PY) -m pipeline.bench.envs

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

test: setup bench-setup reference emulator lint  ## Lint and run the whole test suite (provisions the emulated SD855 and the bench's environments first)
	PPMSEG_REFERENCE_DIR=$(REFERENCE_DIR) $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

info: setup  ## Parameters, GFLOPs and stage shapes (MODEL=tiny|base)
	$(PPMSEG) info --model $(MODEL)

demo: setup  ## Segment a real photograph; writes demo/labels.png and demo/overlay.png
	$(PPMSEG) demo --model $(MODEL) -o demo

build: setup  ## Compile: MODEL=tiny|base DEVICE=host UPSAMPLE=vim|interpolate FRONTEND=torch|onnx INPUT=HxW LAYOUT=blocked|nchw FUSE=on|off
	$(PPMSEG) compile --model $(MODEL) --device $(DEVICE) --upsample $(UPSAMPLE) --frontend $(FRONTEND) \
		--input-size $(INPUT) --layout $(LAYOUT) $(FUSE_ARG) -o $(BUILD_DIR)

bench-vim: setup  ## Fused VIM vs unfused vs plain upsample (THREADS=1); writes bench/results/<cpu>/vim.*
	$(PPMSEG) bench-vim --threads $(THREADS)

# `make bench` runs Tiny and Base; MODEL=tiny|base on the command line runs one.
BENCH_MODELS = $(if $(filter file,$(origin MODEL)),tiny base,$(MODEL))
bench: setup $(VENV)/.installed-bench reference  ## TVM against PyTorch, ONNX Runtime, Paddle, OpenVINO, MNN, LiteRT, ExecuTorch, ncnn [MODEL=] [THREADS=1|all] [DEVICE=host]; writes bench/results/<cpu>/
	@set -e; for m in $(BENCH_MODELS); do \
		$(PPMSEG) bench-peers --model $$m --threads $(THREADS) --device $(DEVICE) \
			--command "make bench MODEL=$$m THREADS=$(THREADS) DEVICE=$(DEVICE)"; done

tune: setup  ## Tune for DEVICE=host|sd855 [MODEL=] [THREADS=1|N|all] [TRIALS=] [TRACKER=host:port] [INPUT=HxW] [LAYOUT=blocked|nchw] [FUSE=on|off] [SEARCH=plain|focused] [FROM_SCRATCH=1]; prints the artifact dir last
	$(PPMSEG) tune --model $(MODEL) --device $(DEVICE) --input-size $(INPUT) --threads $(THREADS) --layout $(LAYOUT) \
		$(FUSE_ARG) $(if $(SEARCH),--search $(SEARCH)) $(if $(TRIALS),--trials $(TRIALS)) \
		$(if $(TRACKER),--tracker $(TRACKER)) $(if $(FROM_SCRATCH),--from-scratch)

tracker: setup  ## Start the local RPC tracker on 127.0.0.1 (reused if running)
	$(PPMSEG) tracker start

host-server: setup  ## Tracker + an RPC server for this machine's CPU (key host)
	$(PPMSEG) tracker start --device host

emulator: setup  ## Provision the emulated SD855 (qemu, cross g++, arm64 Python, aarch64 wheels) and verify it
	$(PPMSEG) emulator

emulator-server: emulator  ## Tracker + SERVERS=N emulated SD855 servers (key sd855)
	$(PPMSEG) tracker start --device sd855 --servers $(SERVERS)

devices: setup  ## What the tracker offers (TRACKER=host:port for yours)
	$(PPMSEG) devices

tracker-stop: setup  ## Stop the tracker and every server started here
	$(PPMSEG) tracker stop

$(RUNNER): pipeline/deploy/native/runner.cc pipeline/deploy/native/__init__.py $(VENV)/.installed
	$(PPMSEG) build-runner -o $@

runner: $(RUNNER)  ## Native runner build/ppmseg-run (g++; links only libtvm_runtime + libtvm_ffi)

runner-aarch64: emulator  ## The native runner cross-built for aarch64 against the emulator's wheels
	$(PPMSEG) build-runner -o build/aarch64/ppmseg-run --cxx aarch64-linux-gnu-g++ \
		--site-packages $${PPMSEG_EMULATOR_DIR:-.cache/emulator}/site

bundle: setup  ## Bundle $(BUILD_DIR) (make build first) for DEVICE into $(BUILD_DIR).tar.gz
	$(PPMSEG) package --artifact $(BUILD_DIR) --device $(DEVICE) -o $(BUILD_DIR).tar.gz

clean:  ## Remove build outputs (keeps the virtual environments)
	-$(PPMSEG) tracker stop 2>/dev/null
	rm -rf demo build tuning .cache .pytest_cache .ruff_cache
