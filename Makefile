# Set-up is part of every target: a fresh clone needs only python3 (>= 3.10) and make. It installs the
# package with its training and test extras at the exact versions the cards were measured with
# (constraints.txt); pyproject.toml itself only states the compatible ranges.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: run test zoo-table benchmark

# evaluate the pretrained pair against their cards: on the Hub's CIFAR-10, or on a local copy with DATA=<folder>
run: $(INSTALLED)
	$(VENV)/bin/python scripts/reproduce.py $(if $(DATA),--data-source $(DATA))

# one test process per core (pytest-xdist)
test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q -n auto

# rewrite every card (its comparison with the zoo), the README's zoo table and plot, and the family table
zoo-table: $(INSTALLED)
	$(VENV)/bin/python scripts/export.py --refresh hub_cards/*/
	$(VENV)/bin/python scripts/zoo_table.py --readme README.md
	$(VENV)/bin/python scripts/model_table.py --readme docs/models.md

# measure the zoo's speed on this CPU (quiet machine: takes several minutes) and rewrite docs/speed.md and the
# README's speed summary; then the ways of running the main pair's XSepConvs that lost, beside the one that won.
# The measurements are kept as JSON: `benchmark.py --from-json` writes their tables again without measuring.
benchmark: $(INSTALLED)
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --forms plain folded fused compiled \
		--json docs/speed-cpu.json --readme docs/speed.md --summary README.md
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --forms folded compiled-folded fused compiled \
		--train-batch 0 --layer-batches --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 \
		--json docs/speed-cpu-compiled.json --readme docs/speed.md --section benchmark-cpu-compiled
	$(VENV)/bin/python scripts/sweep.py --throughput --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 \
		--runs-at-once 1 2 --readme docs/training.md

$(INSTALLED): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[train,test]'
	touch $@
