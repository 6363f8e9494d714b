# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv on first use, installs the package, runs `upo-fast demo` (CPU, ~1.5 min on 2 idle cores)
#   make test   creates .venv on first use, installs the package with its dev, eval (lm-eval) and math (datasets,
#               pyarrow) extras, runs the tests
#   make test-compat   creates .venv-tf449 on first use, installs the package with transformers==4.49.0 (the
#               version LLaDA's users pin), runs the model / adapter / drop-in tests (COMPAT_TESTS) there
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel of torch where this machine has one; override for a CUDA build, e.g. `make TORCH=torch demo`
TORCH ?= torch==2.13.0
# Second environment: the oldest transformers our users pin (LLaDA: 4.49; Dream: 4.46)
COMPAT_VENV := .venv-tf449
COMPAT_BIN := $(COMPAT_VENV)/bin
COMPAT_TRANSFORMERS ?= transformers==4.49.0
# Tests that touch transformers; files not yet written are skipped by $(wildcard) in the recipe
COMPAT_TESTS := tests/test_adapters.py tests/test_llada_equivalence.py tests/test_dream_equivalence.py \
	tests/test_dropin_bad_input.py tests/test_fused_path.py tests/test_native_models.py tests/test_load_model.py \
	tests/test_api_bad_input.py tests/test_cli_errors.py tests/test_run_folder_safety.py \
	tests/test_shipped_text_models.py

.PHONY: demo test test-compat lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,eval,math]"
	touch $@

$(COMPAT_BIN)/python:
	$(PYTHON) -m venv $(COMPAT_VENV)

$(COMPAT_VENV)/.installed: $(COMPAT_BIN)/python pyproject.toml setup.py
	$(COMPAT_BIN)/pip install -q "$(TORCH)"
	$(COMPAT_BIN)/pip install -q -e ".[dev]" "$(COMPAT_TRANSFORMERS)"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/upo-fast demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_BIN)/python -c "import transformers; print('transformers', transformers.__version__)"
	$(COMPAT_BIN)/python -m pytest -q -p no:cacheprovider $(wildcard $(COMPAT_TESTS))

lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .pytest_cache .ruff_cache
