#!/usr/bin/env bash
# What this repository runs on a lent GPU machine (torch preinstalled, no network), in one call:
#   1. the CUDA benchmark (fp32 and bf16) -> $OUT/benchmark-cuda.json
#   2. the paper's full CIFAR-10 recipe (400 epochs) for the main pair, both at once, started or
#      resumed in runs/<model>.cifar10_e400.seed0, stopped (SIGKILL: checkpoints are atomic) before
#      the call's time is up -> $OUT/<model>.tar, to unpack here, resume next time, export when done.
#
#   bash scripts/gpu_job.sh SECONDS       # SECONDS: what the call may take, e.g. 560
# Needs beside the tree: .whl/ (datasets, dill, multiprocess, timm wheels) and .device_data/cifar10/.
set -u
budget=${1:?usage: gpu_job.sh SECONDS}
start=$(date +%s)
out=${OUT:?OUT is not set}
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c 'import torch, timm, datasets, accelerate; print("torch", torch.__version__, "timm", timm.__version__,
"datasets", datasets.__version__, "accelerate", accelerate.__version__)' || exit 1

timeout 150 python3 scripts/benchmark.py --device cuda --precision fp32 bf16 --rounds 5 \
    --json "$out/benchmark-cuda.json" > "$out/benchmark-cuda.md" 2> "$out/benchmark-cuda.err"
echo "benchmark: status $? after $(( $(date +%s) - start )) s"

models=(mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100)
train() {  # model, compile mode
    local dir=runs/$1.cifar10_e400.seed0
    if [ -f "$dir/config.json" ]; then set -- --output-dir "$dir" --resume --compile "$2"
    else set -- --model "$1" --dataset cifar10 --data-source .device_data/cifar10 --seed 0 --output-dir "$dir" --compile "$2"; fi
    python3 scripts/train.py "$@"
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
    echo "$m: $(wc -l < "$dir/log.jsonl" 2>/dev/null || echo 0) epochs logged; last: $(tail -n 1 "$dir/log.jsonl" 2>/dev/null)"
    # a finished run needs only its record and final weights; an unfinished one its latest checkpoint
    if [ -f "$dir/model.safetensors" ]; then files=("$dir/config.json" "$dir/log.jsonl" "$dir/model.safetensors")
    else files=("$dir/config.json" "$dir/log.jsonl" "$dir/checkpoints"); fi
    tar cf "$out/$m.tar" --exclude=".tmp-*" "${files[@]}" 2>&1
done
ls -la "$out"
echo "done after $(( $(date +%s) - start )) s"
