# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install demo test ui clean

install: $(VENV)/.installed

# pip resolves torch and torchvision together (CUDA build, ~6 GB, runs on CPU).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev,slurm]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/python -m pytest

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db

clean:
	rm -rf results .snakemake
