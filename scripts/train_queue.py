"""Work through the zoo's CIFAR-10 training queue: train, resume and export its entries in order.

    python scripts/train_queue.py --hours 2.5            # what fits in the next 2.5 hours
    python scripts/train_queue.py --hours 2.5 --parallel 2 --dry-run

Each entry is trained with the zoo's recipe (the paper's CIFAR recipe shortened to 20 epochs with
1 warm-up epoch) in runs/<model>.cifar10.seed<seed>, resumed if a run was cut off, and exported
to hub_cards/<model>.<tag>/ when finished. Entries already in hub_cards/ are skipped. A run is only
started when it can finish within --hours, judged from the epoch times of runs already logged.
With --parallel N, N runs share the CPU with one thread each.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from xsep_zoo.engine import runs_at_once

ROOT = Path(__file__).resolve().parents[1]
DATA = '../shared/datasets/cifar10'  # the shared copy, from the repository root where commands run
EPOCHS = 20
RECIPE = ['--dataset', 'cifar10', '--epochs', str(EPOCHS), '--warmup-epochs', '1']
# In the order of the issue: the main pair with two seeds, the ablations, kernel sizes, width 0.5.
QUEUE = [
    ('mobilenetv3_small_dw_100', 0), ('mobilenetv3_small_xsep_100', 0),
    ('mobilenetv3_small_dw_100', 1), ('mobilenetv3_small_xsep_100', 1),
    *[(f'mobilenetv3_small_xsep_{a}_100', 0) for a in ('no2x2', 'b', 'p', 'sympad', 'asympad')],
    ('mobilenetv3_small_dw_k7_100', 0), ('mobilenetv3_small_xsep_k7_100', 0),
    ('mobilenetv3_small_dw_ds7_100', 0), ('mobilenetv3_small_xsep_ds7_100', 0),
    ('mobilenetv3_small_dw_050', 0), ('mobilenetv3_small_xsep_050', 0),
]


def tag(seed: int) -> str:
    """The first seed is the `cifar10` tag; others are `cifar10_seed<N>`."""
    return 'cifar10' if seed == 0 else f'cifar10_seed{seed}'


def run_dir(model: str, seed: int) -> Path:
    return ROOT / 'runs' / f'{model}.cifar10.seed{seed}'


def epoch_seconds(parallel: int) -> float:
    """The mean epoch time of the slowest zoo run logged so far, for `parallel` runs at once.

    Whole runs (each part of a run trained beside as many runs), not single epochs: an epoch slowed
    by other work beside it would otherwise set the guess for every epoch of every run. Parts trained
    with as many runs beside them as `parallel` are taken as measured; others only when there are
    none, scaled by the share of a core each run had (with more runs than cores each gets only a
    share of one). 3 min per epoch if none.
    """
    def share(runs: int) -> float:
        return max(1.0, runs / (os.cpu_count() or 1))

    measured, scaled = [], []
    for log in (ROOT / 'runs').glob('*.cifar10.seed*/log.jsonl'):
        recorded = runs_at_once(log.parent)  # for epochs logged before they recorded it
        times = defaultdict(list)
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            times[entry.get('runs_at_once', recorded)].append(entry['seconds'])
        for ran_with, seconds in times.items():
            mean = sum(seconds) / len(seconds)
            (measured if ran_with == parallel else scaled).append(mean / share(ran_with) * share(parallel))
    return max(measured or scaled, default=180.0 * share(parallel))


def seconds_needed(model: str, seed: int, parallel: int) -> float:
    """Time to finish this entry's run and export it while `parallel` runs share the CPU."""
    log = run_dir(model, seed) / 'log.jsonl'
    done = len(log.read_text().splitlines()) if log.is_file() else 0
    return (EPOCHS - done) * epoch_seconds(parallel) + 120


def start(model: str, seed: int, parallel: int) -> subprocess.Popen:
    """Train (or resume) one entry, run from the repository root with relative paths, as a card shows it."""
    folder = run_dir(model, seed)
    threads = 1 if parallel > 1 else (os.cpu_count() or 1)
    output_dir = str(folder.relative_to(ROOT))
    args = ['--output-dir', output_dir, '--resume'] if (folder / 'config.json').is_file() else \
        ['--model', model, '--seed', str(seed), '--data-source', DATA, *RECIPE, '--output-dir', output_dir]
    args += ['--runs-at-once', str(parallel)]  # logged with each epoch, for the time guesses of later queues
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1')
    folder.parent.mkdir(exist_ok=True)
    out = open(folder.parent / f'{folder.name}.out', 'a')
    return subprocess.Popen([sys.executable, 'scripts/train.py', *args], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def export(model: str, seed: int) -> None:
    subprocess.run([sys.executable, 'scripts/export.py', str(run_dir(model, seed).relative_to(ROOT)),
                    '--tag', tag(seed), '--data-source', DATA], cwd=ROOT, check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--hours', type=float, required=True, help='time left; no run starts that cannot finish in it')
    p.add_argument('--parallel', type=int, default=1, help='runs at a time, one thread each when > 1')
    p.add_argument('--dry-run', action='store_true', help='say what would run')
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.hours * 3600
    todo = [(m, s) for m, s in QUEUE if not (ROOT / 'hub_cards' / f'{m}.{tag(s)}').is_dir()]
    if args.dry_run:
        free_at = [time.monotonic()] * args.parallel  # when each slot would be free
        for model, seed in todo:
            needed = seconds_needed(model, seed, args.parallel)
            slot = free_at.index(min(free_at))
            if free_at[slot] + needed > deadline:
                break
            free_at[slot] += needed
            print(f'would train {model} seed {seed}: about {needed / 60:.0f} min, '
                  f'done {(free_at[slot] - time.monotonic()) / 60:.0f} min from now')
        return
    running: dict = {}
    while todo or running:
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                if proc.returncode != 0:
                    sys.exit(f'training {key} failed with status {proc.returncode}; see runs/*.out')
                export(*key)
        while todo and len(running) < args.parallel:
            model, seed = todo[0]
            needed = seconds_needed(model, seed, args.parallel)
            if time.monotonic() + needed > deadline:
                print(f'not starting {model} seed {seed}: it needs about {needed / 60:.0f} min, '
                      f'{(deadline - time.monotonic()) / 60:.0f} min are left')
                todo = []
                break
            todo.pop(0)
            print(f'training {model} seed {seed} (about {needed / 60:.0f} min)', flush=True)
            running[(model, seed)] = start(model, seed, args.parallel)
        time.sleep(10)


if __name__ == '__main__':
    main()
