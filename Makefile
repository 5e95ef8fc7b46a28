# Dark Halo Scope — every target documents itself: `make help`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
DHS     := $(VENV)/bin/dhs
STAMP   := $(VENV)/.setup-stamp
OUT     ?= out
export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export DHS_SHARED_DATA ?= $(abspath ../shared/data)

.PHONY: help setup test test-all lint bench demo clean sky manifest inject package emr-upload emr-plan

EMR_CONFIG ?= configs/emr/example.yaml

help: ## list every target with its one-line description
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with pinned dependencies (re-run automatically when pins change)

$(STAMP): pyproject.toml constraints.txt bootstrap/ensure_java.sh
	bash bootstrap/ensure_java.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

test: lint ## lint, then the fast test set (every stage covered; slow tests excluded), < 15 min on 2 cores
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff, and the import layering of pyproject.toml (import-linter): no cycles, no upward imports
	$(VENV)/bin/ruff check dhs_gen jobs emr tests bench
	$(VENV)/bin/lint-imports --no-cache

bench: $(STAMP) ## performance benchmarks, printed as side-by-side ratios from one run
	$(PY) -m bench

demo: $(STAMP) ## whole chain on the embedded synthetic sky: sky -> 4a -> 4c -> train -> evaluate (OUT=out)
	$(DHS) demo --out $(OUT)/demo

sky: $(STAMP) ## write the embedded synthetic sky to $(OUT)/sky
	$(DHS) sky --out $(OUT)/sky

manifest: $(STAMP) ## 4a on the synthetic sky (CONFIG=demo) -> $(OUT)/manifest
	$(DHS) manifest --parent $(OUT)/sky/parent_sample.parquet --config $(or $(CONFIG),demo) --out $(OUT)/manifest --overwrite

inject: $(STAMP) ## 4c on $(OUT)/manifest -> $(OUT)/stamps
	$(DHS) inject --manifest $(OUT)/manifest --coadds $(OUT)/sky --out $(OUT)/stamps --overwrite

package: $(STAMP) ## build dist/ for EMR: code bundle, entry scripts, resolved presets, pinned requirements, bootstrap
	$(PY) -m emr.package --dist dist

emr-upload: $(STAMP) ## build dist/ and upload it to code_uri of EMR_CONFIG (default configs/emr/example.yaml)
	$(PY) -m emr.package --dist dist --upload-config $(EMR_CONFIG)

emr-plan: $(STAMP) ## print the EMR RunJobFlow request for EMR_CONFIG (offline)
	$(DHS) emr plan --config $(EMR_CONFIG)

clean: ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .pytest_cache build dist *.egg-info
