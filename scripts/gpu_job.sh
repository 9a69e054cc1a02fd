#!/usr/bin/env bash
# What this repository runs on a lent GPU machine (torch preinstalled, no network).
#
#   bash scripts/gpu_job.sh bench            # CUDA benchmark, fp32 and bf16 -> $OUT/benchmark-cuda.{json,md}
#   bash scripts/gpu_job.sh train SECONDS    # the paper's full CIFAR-10 recipe (400 epochs) for the main pair
#
# `train` starts the runs not yet exported, at once, in runs/<model>.cifar10_e400.seed0, or continues them from
# their saved state in hub_cards/<model>.cifar10_e400/last-checkpoint/ (tracked, so it travels with the tree), stops them
# with SIGKILL (checkpoints are atomic) SECONDS after it began, minus a margin, and leaves each run in
# $OUT/<model>.tar: unpack it here into runs/, then `python scripts/run_state.py save` it back into its saved
# state and commit that (or export it when done).
# Each needs .whl/ (wheels of datasets, dill, multiprocess, timm) and .device_data/cifar10/ beside the tree.
# Data (56 MB) and both saved states (25 MB) exceed one call's 64 MiB, so they go in two calls on the same
# machine, which stays warm only 30 s between calls: prepare both before the first, so that nothing is left
# to do here between them. Move hub_cards/*/model.safetensors (nothing here reads them) out of the tree for
# both calls, and the last-checkpoint folders (one per run not yet exported) into .e400_state/<model>/
# (ignored via .git/info/exclude).
#   call 1, carrying .whl and .device_data: `bench`, or only the wheels' install where the benchmark is done
#   call 2, carrying .e400_state: copy each .e400_state/<model>/last-checkpoint into hub_cards/<model>.cifar10_e400/,
#           then `train SECONDS` (what call 1 left on the machine stays there)
# A further `train` call on the still-warm machine continues from the run folders the last one left there
# (restore keeps a run folder that is ahead of the saved state), so device time left over is not wasted.
# Afterwards move the folders back, unpack the newest tars, and `run_state.py save` each run.
set -u
mode=${1:?usage: gpu_job.sh bench | train SECONDS}
start=$(date +%s)
out=${OUT:?OUT is not set}
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
if [ ! -d .device_data/cifar10 ] || [ ! -d .whl ]; then
    echo "missing .device_data/cifar10 or .whl on this machine"; exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, timm, datasets; print("torch", torch.__version__, "timm", timm.__version__,
"datasets", datasets.__version__)' || exit 1

if [ "$mode" = bench ]; then
    python3 scripts/benchmark.py --device cuda --precision fp32 bf16 --rounds 5 \
        --json "$out/benchmark-cuda.json" > "$out/benchmark-cuda.md"
    echo "benchmark: status $? after $(( $(date +%s) - start )) s"
    exit 0
fi
[ "$mode" = train ] || { echo "unknown mode $mode; allowed: bench, train"; exit 2; }
budget=${2:?usage: gpu_job.sh train SECONDS}

models=()  # the runs not exported yet
for m in mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100; do
    python3 scripts/run_state.py published "hub_cards/$m.cifar10_e400" || models+=("$m")
done
[ ${#models[@]} -gt 0 ] || { echo "both runs are exported; nothing to train"; exit 0; }
train() {  # model, compile mode
    local dir=runs/$1.cifar10_e400.seed0 compile=$2
    python3 scripts/run_state.py restore "hub_cards/$1.cifar10_e400/last-checkpoint" "$dir" || return 1
    if [ -f "$dir/config.json" ]; then set -- --output-dir "$dir" --resume
    else set -- --model "$1" --dataset cifar10 --data-source .device_data/cifar10 --seed 0 --output-dir "$dir"; fi
    python3 scripts/train.py "$@" --compile "$compile" --runs-at-once ${#models[@]}
}
declare -A pid
for m in "${models[@]}"; do
    train "$m" reduce-overhead > "$out/$m.log" 2>&1 & pid[$m]=$!
done
stop_at=$(( start + budget - 30 ))
while [ "$(date +%s)" -lt $stop_at ]; do
    running=0
    for m in "${models[@]}"; do
        if kill -0 "${pid[$m]}" 2>/dev/null; then running=1; continue; fi
        wait "${pid[$m]}"; status=$?
        if [ $status -ne 0 ] && ! grep -q '"epoch"' "runs/$m.cifar10_e400.seed0/log.jsonl" 2>/dev/null; then
            echo "$m: reduce-overhead failed before its first epoch (status $status); again with --compile default"
            train "$m" default >> "$out/$m.log" 2>&1 & pid[$m]=$!; running=1
        fi
    done
    [ $running -eq 0 ] && break
    sleep 5
done
for m in "${models[@]}"; do kill -9 "${pid[$m]}" 2>/dev/null; done
wait 2>/dev/null
for m in "${models[@]}"; do
    dir=runs/$m.cifar10_e400.seed0
    logged=$(wc -l < "$dir/log.jsonl" 2>/dev/null || echo 0)
    echo "$m: $logged epochs logged; last: $(tail -n 1 "$dir/log.jsonl" 2>/dev/null)"
    # a finished run needs only its record and final weights; an unfinished one its latest checkpoint
    if [ -f "$dir/model.safetensors" ]; then files=("$dir/config.json" "$dir/log.jsonl" "$dir/model.safetensors")
    else files=("$dir/config.json" "$dir/log.jsonl" "$dir/checkpoints"); fi
    tar cf "$out/$m.tar" --exclude=".tmp-*" "${files[@]}" 2>&1
done
ls -la "$out"
echo "done after $(( $(date +%s) - start )) s"
