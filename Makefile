# Set-up is part of every target: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: run test zoo-table

run: $(INSTALLED)
	$(VENV)/bin/python scripts/reproduce.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q

# regenerate the README's zoo table and plot from hub_cards/
zoo-table: $(INSTALLED)
	$(VENV)/bin/python -m pip install -q -e '.[plot]'
	$(VENV)/bin/python scripts/zoo_table.py --readme README.md

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@
