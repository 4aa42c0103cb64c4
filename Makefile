# The two commands of the README: `make demo` and `make test` (`make test SEED=N`: one order again). Both install first.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install slurm demo test ui clean

install: $(VENV)/.installed

# pip resolves torch and torchvision together (CUDA build, ~6 GB, runs on CPU).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e '.[dev,slurm]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES)

# The tests run in a random order (pytest-randomly), its seed printed at the start and the end of the run;
# `make test SEED=N` runs them in the order of seed N again.
SEED ?=
test: install slurm
	$(BIN)/python -m pytest -p randomly $(if $(SEED),--randomly-seed=$(SEED))

# tests/workflow/test_slurm.py boots a private single-node SLURM (tests/slurm_cluster.py). As root on Debian
# (CI), install its packages when missing; elsewhere the test says what it lacks and is skipped.
# policy-rc.d keeps apt from starting the system's munge and slurm services.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm:
	@missing=; for c in slurmctld slurmd sbatch srun munged; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SLURM_PACKAGES) for the SLURM test"; \
	  policy=/usr/sbin/policy-rc.d; added=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; added=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SLURM_PACKAGES) >/dev/null; status=$$?; \
	  [ -z "$$added" ] || rm -f $$policy; exit $$status; \
	fi

ui: install
	$(BIN)/ferseq ui --config config.yaml

clean:
	rm -rf results .snakemake
