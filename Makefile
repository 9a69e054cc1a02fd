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

# continue the 400-epoch main pair (started on a lent GPU by scripts/gpu_job.sh) on this CPU, both at once with
# one thread each, for MINUTES; each stops checkpointed after its last epoch that fits. The runs read their data
# from where they began, .device_data/cifar10 (ignored): a copy of the shared one.
MINUTES ?= 150
E400_RUNS := $(foreach m,dw xsep,runs/mobilenetv3_small_$(m)_100.cifar10_e400.seed0)
e400-cpu: $(INSTALLED)
	test -d .device_data/cifar10 || (mkdir -p .device_data && cp -r ../shared/datasets/cifar10 .device_data/)
	for run in $(E400_RUNS); do \
		OMP_NUM_THREADS=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(VENV)/bin/python scripts/train.py \
			--output-dir $$run --resume --time-limit $(MINUTES) --runs-at-once 2 >> $$run.cpu.out 2>&1 & \
	done; wait
	tail -qn1 $(foreach run,$(E400_RUNS),$(run)/log.jsonl)

$(INSTALLED): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@
