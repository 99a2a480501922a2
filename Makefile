# Everything a fresh machine needs: `make demo` runs the offline demo, `make test` runs the checks and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/cropseg demo --out demo-out

lint: install
	$(PY) -m ruff check cropseg tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
