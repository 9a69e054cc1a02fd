# Set-up is part of every target: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: run test zoo-table benchmark e400-cpu

run: $(INSTALLED)
	$(VENV)/bin/python scripts/reproduce.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -q

# regenerate the README's zoo table and plot from hub_cards/
zoo-table: $(INSTALLED)
	$(VENV)/bin/python -m pip install -q -e '.[plot]'
	$(VENV)/bin/python scripts/zoo_table.py --readme README.md

# measure the zoo's speed on this CPU (quiet machine: takes several minutes) and rewrite the README table
benchmark: $(INSTALLED)
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --readme README.md
	$(VENV)/bin/python scripts/benchmark.py --device cpu --threads 2 --forms plain fused compiled --train-batch 0 \
		--layer-batches --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 \
		--readme README.md --section benchmark-cpu-compiled

# train the 400-epoch main pair (also on lent GPUs: scripts/gpu_job.sh) on this CPU for MINUTES, the unfinished runs
# at once, sharing the cores (both: one thread each; one left: all of them); each stops checkpointed after its last
# epoch that fits. A run continues from its saved state, hub_cards/<model>.cifar10_e400/last-checkpoint/
# (scripts/run_state.py), and saves its progress there at the end: commit it, or the next session starts where this
# one began. When one run finishes early, run the target again: the other continues on every core. A finished run
# is published with `scripts/export.py runs/<run> --tag cifar10_e400`, which replaces that saved state; from then on
# the target leaves it alone. The runs read their data from .device_data/cifar10 (ignored), a copy of the shared one.
MINUTES ?= 150
E400_MODELS := mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100
e400-cpu: $(INSTALLED)
	test -d .device_data/cifar10 || (mkdir -p .device_data && cp -r ../shared/datasets/cifar10 .device_data/)
	mkdir -p runs
	todo=; for m in $(E400_MODELS); do \
		hub=hub_cards/$$m.cifar10_e400; run=runs/$$m.cifar10_e400.seed0; \
		$(VENV)/bin/python scripts/run_state.py published $$hub && continue; \
		$(VENV)/bin/python scripts/run_state.py restore $$hub/last-checkpoint $$run || exit 1; \
		$(VENV)/bin/python scripts/run_state.py finished $$run || todo="$$todo $$m"; \
	done; \
	n=$$(echo $$todo | wc -w); [ $$n -gt 0 ] || { echo "nothing left to train: export the finished runs"; exit 0; }; \
	threads=$$(( $$(nproc) / n )); [ $$threads -ge 1 ] || threads=1; \
	for m in $$todo; do \
		run=runs/$$m.cifar10_e400.seed0; \
		if [ -f $$run/config.json ]; then args="--output-dir $$run --resume"; \
		else args="--model $$m --dataset cifar10 --data-source .device_data/cifar10 --seed 0 --output-dir $$run"; fi; \
		OMP_NUM_THREADS=$$threads HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(VENV)/bin/python scripts/train.py \
			$$args --time-limit $(MINUTES) --runs-at-once $$n >> $$run.cpu.out 2>&1 & \
	done; wait; \
	for m in $$todo; do \
		$(VENV)/bin/python scripts/run_state.py save runs/$$m.cifar10_e400.seed0 \
			hub_cards/$$m.cifar10_e400/last-checkpoint || exit 1; \
		tail -n1 runs/$$m.cifar10_e400.seed0/log.jsonl; \
	done

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@
