# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv on first use, installs the package, runs `upo-fast demo` (CPU, a few minutes)
#   make test   creates .venv on first use, installs the package with its dev extras, runs the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel of torch where this machine has one; override for a CUDA build, e.g. `make TORCH=torch demo`
TORCH ?= torch==2.13.0

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/upo-fast demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
