# loraplus-lab: the two commands of the README, and a few helpers.
#   make sweep   create .venv, install the package alone (what the width sweep needs), run it
#   make test    add the test extras (pytest, ruff, Ray, transformers, peft, ...), run the tests
# Without make, the same steps by hand are in the README.
PYTHON ?= python3
VENV ?= .venv
# torch is installed before the project so that the project's own range installs nothing more,
# from pip's configured index. On Linux, PyPI's torch wheel is the CUDA build (several GB with its
# CUDA libraries); the CPU build comes from PyTorch's own index:
#   make sweep TORCH_INDEX=https://download.pytorch.org/whl/cpu
# On a GPU machine `make sweep TORCH_SPEC=torch` installs the platform's default build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: install sweep test lint bench clean

$(BASE): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	@touch $(BASE)

$(DEV): $(BASE)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(DEV)

install: $(DEV)

sweep: $(BASE)
	$(BIN)/loraplus-lab sweep

test: $(DEV)
	$(BIN)/python -m pytest -q

lint: $(DEV)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(DEV)
	$(BIN)/python benchmarks/bench_toy.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) results .pytest_cache
