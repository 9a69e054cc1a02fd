# Set-up is part of every target: a fresh clone needs only python3 (>= 3.10) and make. It installs the
# package with its training and test extras at the exact versions the cards were measured with
# (constraints.txt); pyproject.toml itself only states the compatible ranges.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: run test zoo-table benchmark

run: $(INSTALLED)
	$(VENV)/bin/python scripts/reproduce.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q

# regenerate the README's zoo table and plot from hub_cards/
zoo-table: $(INSTALLED)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[plot]'
	$(VENV)/bin/python scripts/zoo_table.py --readme README.md

# measure the zoo's speed on this CPU (quiet machine: takes several minutes) and rewrite the README table
benchmark: $(INSTALLED)
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --readme README.md
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --forms plain fused compiled --train-batch 0 \
		--layer-batches --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 \
		--readme README.md --section benchmark-cpu-compiled

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[train,test]'
	touch $@
