# loraplus-lab: the two commands of the README, and a few helpers.
#   make sweep   create .venv, install, run the default width sweep
#   make test    same install if needed, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# torch is installed before the project so that the project's own range installs nothing more.
# On a GPU machine use e.g. `make sweep TORCH_SPEC=torch` for your platform's CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install sweep test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

sweep: $(STAMP)
	$(BIN)/loraplus-lab sweep

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_toy.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) results .pytest_cache
