# Set-up is part of every target: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: run test

run: $(INSTALLED)
	$(VENV)/bin/python scripts/model_table.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@
