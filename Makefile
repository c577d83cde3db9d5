# cellfeat — `make help` lists the targets. Every target builds its own .venv first.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# this machine's pip config names mirror folders that may be absent: hide that noise only
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
DATA     ?= build/synthetic
FEATURES ?= build/features/$(notdir $(abspath $(DATA)))
MODEL    ?= models/cellfeat.skops
REPORT   ?=
OUT      ?= build/predictions.csv
ARGS     ?=

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,cnn,dask]' 2>&1 | $(QUIET_PIP)
	@touch $@

.PHONY: help install demo test test-quick features train score bench synthetic clean

help: ## list the targets with one line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) FEATURES=$(FEATURES) MODEL=$(MODEL) OUT=$(OUT) ARGS=<extra CLI flags>"

install: $(STAMP) ## create .venv and install cellfeat with its extras (idempotent)

demo: $(STAMP) ## synthetic cohort -> features -> train -> score; prints the CV balanced accuracy
	$(BIN)/cellfeat demo $(ARGS)

test: $(STAMP) ## run the whole test suite (what CI runs: .ci/run; about 7 minutes on 2 cores)
	$(BIN)/python -m pytest -q $(ARGS)

QUICK := not slow and not browser and not realdata and not estimator_checks
test-quick: $(STAMP) ## the edit-loop tier: unit tests on synthetic data, no browser, no estimator checks (< 90 s)
	$(BIN)/python -m pytest -q -m "$(QUICK)" $(ARGS)

synthetic: build/synthetic/.synthetic ## write the built-in synthetic cohort to build/synthetic

build/synthetic/.synthetic: | $(STAMP)
	$(BIN)/cellfeat synthetic build/synthetic
	@touch $@

ENSURE_DATA = @if [ "$(DATA)" = "build/synthetic" ]; then $(MAKE) --no-print-directory synthetic; fi

features: $(STAMP) ## per-cell features of DATA into FEATURES (cached, resumable)
	$(ENSURE_DATA)
	$(BIN)/cellfeat features $(DATA) --features $(FEATURES) $(ARGS)

train: $(STAMP) ## cross-validate the candidates on DATA's labelled patients, save MODEL and a report
	$(ENSURE_DATA)
	$(BIN)/cellfeat train $(DATA) --features $(FEATURES) --model $(MODEL) $(if $(REPORT),--report $(REPORT)) $(ARGS)

score: $(STAMP) ## score DATA's unlabelled patients with MODEL into OUT (+ submission, montages)
	$(ENSURE_DATA)
	$(BIN)/cellfeat score $(DATA) --features $(FEATURES) --model $(MODEL) --out $(OUT) $(ARGS)

bench: $(STAMP) ## speed/memory benchmark on ../shared/data/dlmi (features vs decode, MIL fits)
	$(BIN)/python -m pipelines.bench $(ARGS)

clean: ## remove build outputs (keeps .venv)
	rm -rf build models reports
