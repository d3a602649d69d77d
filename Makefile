# Two commands for a fresh machine: `make demo` and `make test` (both install first).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format clean

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

test: lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not gpu" -q

test-fast: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m "not slow and not gpu" -q

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
