# Two commands for a fresh machine: `make train` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
STEPS ?= 600000
PY := $(VENV)/bin/python

.PHONY: install train test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m metta_agent.blocks.fused_lstm
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/metta-agent train --game arena --steps $(STEPS) --run-dir runs/train-$$(date +%Y%m%d-%H%M%S)

test: install
	$(PY) -m pytest -q

bench: install
	$(VENV)/bin/metta-agent bench --json

clean:
	rm -rf $(VENV) runs
