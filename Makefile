# Two set-up commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
SHELL := /bin/bash
PY    := .venv/bin/python
export PEFT_NOTES_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: all demo test slow bench docs readme lab export clean-nbs check venv

all: test

# torch==2.13.0 first: it is the CPU wheel on disk; any looser spec pulls a multi-GB CUDA build.
.venv/.installed: settings.ini setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,examples,search]"
	touch $@

venv: .venv/.installed

demo: .venv/.installed
	.venv/bin/peft-notes demo --out runs/demo

# ends with the 15 slowest items and tools/suite_budget.py's report (chapters over 60 s, the suite against its 20 minutes)
test: .venv/.installed
	@mkdir -p runs; start=$$(date +%s); \
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=15 --junitxml=runs/junit.xml tests; rc=$$?; \
	$(PY) tools/suite_budget.py runs/junit.xml --wall $$(( $$(date +%s) - start )) --top 0 || true; exit $$rc

# every chapter with its slow cells too (the full-size runs whose outputs the chapters keep); they assert the figures their prose quotes
slow: .venv/.installed
	PEFT_NOTES_SLOW=1 $(PY) -m pytest -n 2 -q tests/test_notebooks.py

# LoRA speed and memory ratios (issue 3's benchmark), ~6 min on 2 cores; see bench/lora_bench.py
bench: .venv/.installed
	$(PY) bench/lora_bench.py --out runs/bench/cpu.json

export: .venv/.installed
	.venv/bin/nbdev_export

clean-nbs: .venv/.installed
	.venv/bin/nbdev_clean

readme: .venv/.installed
	$(PY) tools/docs.py readme

# nbdev_docs where Quarto exists; otherwise nbdev's processed notebooks rendered by smalldocs.
docs: .venv/.installed
	if command -v quarto >/dev/null; then .venv/bin/nbdev_docs; else $(PY) tools/docs.py site; fi

lab: .venv/.installed
	.venv/bin/jupyter lab nbs

# what the before-stop hook checks: clean notebooks, exported code in sync, README in sync
check: .venv/.installed
	.venv/bin/nbdev_clean && .venv/bin/nbdev_export && $(PY) tools/docs.py readme && git diff --exit-code
