# The two commands of the README, each doing its own set-up on a fresh machine (Python 3.11 + pip).
#   make experiment   run nbs/run_experiment.ipynb (model=stfpm, seed=0) on the embedded dataset
#   make test         notebooks (nbdev_test) + tests/ (pytest)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clad-installed
MODEL ?= stfpm
SEED ?= 0
OUT ?= output/$(MODEL)_seed$(SEED).ipynb

.PHONY: experiment test export-check venv readme docs docs-test slurm-test

venv: $(STAMP)

# Re-install only when the package definition changed; quiet when everything is there.
$(STAMP): setup.py settings.ini constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,docs]"
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

experiment: $(STAMP)
	@mkdir -p $(dir $(OUT))
	$(BIN)/papermill nbs/run_experiment.ipynb $(OUT) -p model $(MODEL) -p seed $(SEED) --cwd nbs
	@echo "result notebook: $(OUT)"

# The package must be exactly what the notebooks export, and README.md what nbs/index.ipynb gives.
SNAPSHOT = find clad -name '*.py' | sort | xargs sha256sum; sha256sum README.md
export-check: $(STAMP)
	@before=$$($(SNAPSHOT) | sha256sum); $(BIN)/nbdev_export && $(BIN)/clad-readme >/dev/null; \
	after=$$($(SNAPSHOT) | sha256sum); \
	if [ "$$before" != "$$after" ]; then echo "clad/ or README.md was not what nbs/ exports: nbdev_export and clad-readme just rewrote them; commit the result"; exit 1; fi

readme: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/clad-readme

# Tests write into temporary folders only: each command runs under a guard that fails, naming the files, if it created,
# changed or removed anything under output/ (the user's run folders; data/'s embedded-dataset cache may be shared).
GUARD = $(BIN)/python tools/output_guard.py output --
test: export-check
	$(GUARD) env OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2  # one thread per notebook: two notebooks fill two cores
	$(GUARD) $(BIN)/python -m pytest -q tests

# The documentation site from the notebooks: Quarto (nbdev's renderer) when installed, else Sphinx + myst-nb (offline).
docs: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/clad-docs --out _site
	@echo "open _site/index.html"

# The site in a real browser (headless Chromium, installed by the test when missing); slow, so not part of `make test`.
docs-test: $(STAMP)
	CLAD_TEST_DOCS=1 $(BIN)/python -m pytest -q tests/test_docs.py

# Sweeps on a real one-node Slurm cluster (tools/slurm_cluster.sh: munged, slurmctld and slurmd on localhost, no
# accounting; needs root): installs slurm-wlm and munge with apt-get when missing. The test starts and stops the
# cluster; the trap stops it too if the test is interrupted. Slow, so not part of `make test`.
SLURM_DIR ?= /tmp/clad-slurm-test
slurm-test: $(STAMP)
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge; }
	@trap 'CLAD_SLURM_DIR=$(SLURM_DIR) tools/slurm_cluster.sh stop' EXIT; trap 'exit 130' INT TERM; \
	  CLAD_SLURM_DIR=$(SLURM_DIR) CLAD_TEST_SLURM=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests/test_slurm.py
