"""What subnormal floats cost a trained model's training step on this CPU, and what flushing them saves.

Late in a long run, subnormal floats (below 1.2e-38), which many CPUs compute with in microcode,
turn up in the weights or only within a training step (activations, gradients: the table counts
those in the weights). For each run (or its saved state, scripts/run_state.py, or its exported Hub
folder) this times an SGD step of its latest weights, and of the same model freshly initialized,
with torch's flush-to-zero off and on, alternating. The learning rate is 0, so every step sees the
same weights.
It runs on one thread: switching the mode reaches only the calling thread, not OpenMP's workers
(xsep_zoo.engine.flush_subnormals).

    python scripts/subnormal_speed.py hub_cards/mobilenetv3_small_xsep_100.cifar10_e400
    python scripts/subnormal_speed.py runs/a runs/b --readme README.md
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import xsep_zoo  # noqa: F401  (registers the models)
from readme_section import check_section, print_and_write
from xsep_zoo.data import DATASETS
from xsep_zoo.engine import cpu_model
from xsep_zoo.hub import load_weights_into

SECTION = 'subnormal-speed'
TINY = torch.finfo(torch.float32).tiny


def count_subnormal(model: torch.nn.Module) -> tuple[int, int]:
    """(subnormal, all) floats among the model's parameters and buffers."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    subnormal = sum(int(((t != 0) & (t.abs() < TINY)).sum()) for t in tensors)
    return subnormal, sum(t.numel() for t in tensors)


def step_seconds(model: torch.nn.Module, batch_size: int, rounds: int, steps: int) -> dict:
    """Median over rounds of the mean step time, flush-to-zero off and on in turn within each round."""
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=6e-5)
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(model.num_classes, (batch_size,))

    def step():
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = {False: [], True: []}
    try:
        for _ in range(rounds):
            for flush in times:
                torch.set_flush_denormal(flush)
                step()  # warm-up in this mode
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times[flush].append((time.perf_counter() - start) / steps)
    finally:
        torch.set_flush_denormal(False)
    return {flush: statistics.median(t) for flush, t in times.items()}


def run_model(folder: Path) -> tuple[str, int]:
    """The model name and class count, from the config.json of a run, a saved state or an exported Hub folder."""
    config = json.loads((folder / 'config.json').read_text())
    if 'architecture' in config:  # timm's Hub config, written by scripts/export.py
        return config['architecture'], config['num_classes']
    return config['config']['model'], DATASETS[config['config']['dataset']].num_classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', type=Path,
                   help='run folders, saved states (scripts/run_state.py) or exported Hub folders')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--rounds', type=int, default=5, help='alternations of the two modes (default 5)')
    p.add_argument('--steps', type=int, default=5, help='timed steps per mode and round (default 5)')
    p.add_argument('--readme', type=Path, help=f'rewrite the {SECTION} section of this file')
    args = p.parse_args()
    for folder in args.runs:
        if not (folder / 'config.json').is_file():
            sys.exit(f'{folder}: no config.json; expected a run folder of scripts/train.py, '
                     'its saved state or its exported Hub folder')
    check_section(args.readme, SECTION)
    if not torch.set_flush_denormal(False):
        sys.exit('torch cannot flush subnormal floats on this CPU (it needs x86 with SSE3); nothing to compare')
    torch.set_num_threads(1)

    rows = []
    for folder in args.runs:
        name, num_classes = run_model(folder)
        for weights in ('trained', 'fresh'):
            model = timm.create_model(name, num_classes=num_classes)
            if weights == 'trained':
                path, _ = load_weights_into(model, folder)
                weights = f'`{path}`'
            subnormal, total = count_subnormal(model)
            seconds = step_seconds(model, args.batch_size, args.rounds, args.steps)
            rows.append(f'| `{name}` | {weights} | {subnormal:,} of {total:,} | {seconds[False] * 1e3:.0f} '
                        f'| {seconds[True] * 1e3:.0f} | {seconds[False] / seconds[True]:.2f} |')

    options = [f'--{flag.replace("_", "-")} {value}' for flag, value in vars(args).items()
               if flag not in ('runs', 'readme') and value is not None and value != p.get_default(flag)]
    command = ' '.join(['python scripts/subnormal_speed.py', *map(str, args.runs), *options])
    table = '\n'.join([
        f'SGD step of batch {args.batch_size} (fp32, channels_last, random 32x32 inputs), median of {args.rounds} '
        f'rounds of {args.steps} steps per mode, on {cpu_model()} (one thread, '
        f'torch {torch.__version__}); written by `{command}`.',
        '',
        '| model | weights | subnormal floats | step (ms) | step, flushed (ms) | slowdown |',
        '|---|---|---:|---:|---:|---:|',
        *rows,
    ]) + '\n'
    print_and_write(table, args.readme, SECTION)


if __name__ == '__main__':
    main()
