# The two set-up commands of the README: `make lab` and `make test`. Both create .venv and install
# on first use (and again whenever pyproject.toml or constraints.txt change).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lorakit-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
SOLUTIONS := $(sort $(wildcard notebooks/solutions/[0-9][0-9]_*.ipynb))
# Notebook outputs are compared digit for digit: fix the CPU thread count so they do not depend on
# how many cores the machine has.
export OMP_NUM_THREADS := 2
export MKL_NUM_THREADS := 2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

.PHONY: lab test lint unit notebooks notebook execute solutions site test-browser distributed bench results constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on a machine with a local CPU wheel this takes it (seconds); elsewhere
	# PyPI's default build for the platform (CUDA on Linux x86-64).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[course,dev]"
	touch $(STAMP)

## Set up (first time) and open the course in JupyterLab.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

## Set up (first time) and run every check: ruff, pytest, nbval (strict) on all notebooks and their solutions.
test: $(STAMP) lint unit notebooks

lint: $(STAMP)
	$(BIN)/ruff check lorakit tests bench scripts notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest -q $(NBVAL) $(NOTEBOOKS) $(SOLUTIONS)

## One notebook's checks: make notebook NB=notebooks/01_lora_forward.ipynb
notebook: $(STAMP)
	$(BIN)/python -m pytest -q $(NBVAL) $(NB)

## Re-execute notebooks in place (after lorakit changes what they print): make execute [NB=...]
execute: $(STAMP)
	$(BIN)/python scripts/execute_notebooks.py $(or $(NB),$(NOTEBOOKS))

## Split the exercises' solutions out to notebooks/solutions/ and re-execute both: make solutions [NB=...]
solutions: $(STAMP)
	$(BIN)/python scripts/make_solutions.py $(NB)

## The course as a static website that works offline: build/site/index.html
site: $(STAMP)
	$(BIN)/python scripts/build_site.py --out build/site

## A learner's session in a real headless browser (JupyterLab + Chromium via Playwright), screenshots in
## build/screenshots/; installs Debian's chromium with apt when missing and root, otherwise skips with a message.
test-browser: site
	$(BIN)/python scripts/check_browser.py --site build/site

## A 2-process QLoRA + FSDP run on this machine (gloo on CPU, nccl on GPUs): build/distributed_run.json
distributed: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node 2 scripts/train_distributed.py --method qlora --engine fsdp --out build/distributed_run.json

## Benchmarks (not tests): results go to bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/lora_overhead.py
	$(BIN)/python bench/nf4.py
	$(BIN)/python bench/dora.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/family.py
	$(BIN)/python bench/kernels.py

## Regenerate the stored experiment results (data/results/*.json): every scripts/results_*.py, in order, then
## the capstone (scripts/capstone.py). Long (see README for the wall times); one script:
## make results RESULTS=scripts/results_nb03_lr_sweep.py
RESULT_SCRIPTS := $(sort $(wildcard scripts/results_*.py)) scripts/capstone.py
results: $(STAMP)
	for s in $(or $(RESULTS),$(RESULT_SCRIPTS)); do echo "== $$s"; $(BIN)/python $$s || exit 1; done

constraints: $(STAMP)
	(head -3 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu//') > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build
