# Two commands for a fresh machine: `make demo` and `make test` (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-tools lint format clean verify-gguf

install: $(STAMP)

# torch first, pinned, so pip takes the CPU wheel here instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/llama-sft demo --output_dir runs/demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Tools the suite checks our output with: llama.cpp (llama-cpp-python built from source once, the
# wheel cached in ~/.cache/llama-sft/wheels; ~8.5 CPU-minutes the first time) and Go's text/template
# (Ollama's template engine; Debian's golang-go where apt-get can install it).
test-tools: install
	command -v go >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -q golang-go >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q golang-go >/dev/null))) || echo "note: no go toolchain; the Ollama template test will skip (fail under CI=true)"
	LLAMA_SFT_BUILD_LLAMA_CPP=1 $(PY) tests/llama_cpp_build.py

test: lint test-tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not gpu" -q

test-fast: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not slow and not gpu" -q

# GGUF export checked by llama.cpp itself: builds llama-cpp-python from source once (~4.5 min on 2
# idle cores; the wheel is cached in ~/.cache/llama-sft/wheels), then runs the export tests.
verify-gguf: test-tools
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest tests/export -q

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
