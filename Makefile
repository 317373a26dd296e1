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

.PHONY: experiment test export-check venv docs clean-output

venv: $(STAMP)

# Re-install only when the package definition changed; quiet when everything is there.
$(STAMP): setup.py settings.ini constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

experiment: $(STAMP)
	@mkdir -p $(dir $(OUT))
	$(BIN)/papermill nbs/run_experiment.ipynb $(OUT) -p model $(MODEL) -p seed $(SEED) --cwd nbs
	@echo "result notebook: $(OUT)"

# The package must be exactly what the notebooks export.
export-check: $(STAMP)
	@$(BIN)/nbdev_export
	@git diff --quiet -- clad 2>/dev/null || { echo "clad/ differs from what nbs/ exports: run nbdev_export and commit"; git --no-pager diff --stat -- clad; exit 1; }

test: export-check
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q tests
