"""Train several runs at once on one machine, each resumable; or measure how fast runs train side by side.

    python scripts/sweep.py --root runs/e400 --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 \\
        --seeds 1 2 --runs-at-once 4 --time-limit 600 -- --data-source /path/to/cifar10
    python scripts/sweep.py --root runs/e20 --models mobilenetv3_small_dw_100 --seeds 0 1 2 \\
        --set epochs=20 warmup_epochs=1 lr=0.1,0.35       # a comma list: one run per value
    python scripts/sweep.py --throughput --models mobilenetv3_small_dw_100 --runs-at-once 1 2 4

A sweep trains every combination of --seeds, --models and --set values with scripts/train.py,
--runs-at-once processes at a time: they share the GPU, or split the CPU cores (cores / N threads
each). Each run has its own directory under --root, named model.dataset.recipe.seedN (recipe: the
settings that differ from the dataset's defaults, or the recipe's name when none do), and writes
what it prints to train.log there. Run the same command again to continue: finished runs are
skipped, stopped or killed ones resume exactly from their last checkpoint. Flags after -- go to
every run as they are (--data-source, --compile, ...).

--throughput measures training images/s instead: one process per run, each building its run as
scripts/train.py does on synthetic images of the dataset's size, and counting the images trained
in the same time window after warm-up (compiling included there), single and side by side.
"""
import argparse
import contextlib
import ctypes
import io
import itertools
import json
import multiprocessing
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from xsep_zoo.engine import available_cores

from compare_runs import NOT_RECIPE  # settings that say where or how fast a run ran: not in its name
from readme_section import check_section, print_and_write

TRAIN_SCRIPT = Path(__file__).resolve().with_name('train.py')
# train.py flags that the sweep sets itself, with the option that sets them
OWNED = {'model': '--models', 'dataset': '--dataset', 'seed': '--seeds', 'output_dir': '--root',
         'resume': 'nothing: runs resume by themselves', 'time_limit': '--time-limit'}


@dataclass
class Run:
    name: str
    dir: Path
    flags: list  # train.py flags, without --output-dir, --resume and --time-limit


def parse_args(argv=None) -> tuple[argparse.Namespace, list]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', required=True, help='registered timm model names')
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--dataset', default='cifar10', help='dataset and recipe preset of every run (default cifar10)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help="train.py settings for every run, e.g. epochs=20 channels_last=false; a comma list "
                        "(lr=0.1,0.35) makes one run per value")
    p.add_argument('--runs-at-once', nargs='+', type=int, default=[1], metavar='N',
                   help='processes training at the same time (default 1); with --throughput, each N is measured')
    p.add_argument('--cores', type=int, default=available_cores(),
                   help='CPU cores to split among the runs at once (default: all this process may use, %(default)s)')
    p.add_argument('--root', type=Path, help='folder of the run directories (needed unless --throughput)')
    p.add_argument('--time-limit', type=float, metavar='MINUTES',
                   help='stop running runs checkpointed by this many minutes, and start no run after it or after '
                        'a run has stopped for it (each started run trains at least one epoch); the same command '
                        'continues')
    t = p.add_argument_group('--throughput')
    t.add_argument('--throughput', action='store_true', help='measure training images/s instead of training')
    t.add_argument('--readme', type=Path, help='also write the throughput table into this markdown file ...')
    t.add_argument('--section', default='training-throughput', help='... between its <!-- SECTION:start/end --> '
                   'markers (default training-throughput)')
    t.add_argument('--warmup-steps', type=int, default=10, help='steps before the timed window (default 10)')
    t.add_argument('--seconds', type=float, default=20.0, help='length of the timed window (default 20)')
    t.add_argument('--images', type=int, default=50_000, help='synthetic training images per run (default 50000)')
    args = p.parse_args(argv)
    if any(n < 1 for n in args.runs_at_once):
        p.error(f'--runs-at-once must be at least 1, not {min(args.runs_at_once)}')
    if not args.throughput and len(args.runs_at_once) > 1:
        p.error(f'--runs-at-once takes one number when training, not {len(args.runs_at_once)}')
    if not args.throughput and args.root is None:
        p.error('--root is needed: the folder the run directories go in')
    if args.time_limit is not None and args.time_limit <= 0:
        p.error(f'--time-limit must be a positive number of minutes, not {args.time_limit:g}')
    if args.cores < 1:
        p.error(f'--cores must be at least 1, not {args.cores}')
    if args.warmup_steps < 1 or args.seconds <= 0 or args.images < 1:
        p.error(f'--warmup-steps {args.warmup_steps}, --seconds {args.seconds:g} and --images {args.images} must '
                'all be positive')
    for flag in extra:
        key = flag.lstrip('-').split('=')[0].replace('-', '_')
        if flag.startswith('--') and key in OWNED:
            p.error(f'{flag} after --: the sweep sets it; use {OWNED[key]}')
    return args, extra


def _train_module():
    """scripts/train.py as a module: runs are checked, named and measured with its own functions."""
    if str(TRAIN_SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(TRAIN_SCRIPT.parent))
    import train
    return train


def set_flags(settings: list) -> list:
    """--set KEY=VALUE items as lists of train.py flags, one list per combination of comma-separated values."""
    axes = []
    for item in settings:
        key, sep, values = item.partition('=')
        key = key.strip().lstrip('-').replace('-', '_')
        if not sep or not key or not values:
            sys.exit(f'--set {item!r}: expected KEY=VALUE, e.g. epochs=20 or lr=0.1,0.35')
        if key in OWNED:
            sys.exit(f'--set {item!r}: the sweep sets {key}; use {OWNED[key]}')
        flag = '--' + key.replace('_', '-')
        choices = []
        for value in values.split(','):
            if value.lower() in ('true', 'false'):  # a switch: --channels-last / --no-channels-last
                choices.append([flag] if value.lower() == 'true' else ['--no-' + flag[2:]])
            else:
                choices.append([flag, value])
        axes.append(choices)
    return [sum(combination, []) for combination in itertools.product(*axes)]


def _resolve(train, flags: list, where: str) -> tuple[argparse.Namespace, dict]:
    """train.py's arguments and configuration for `flags` of a new run, or an exit naming what is wrong."""
    missing = Path(tempfile.gettempdir()) / f'sweep-check-{os.getpid()}' / 'run'  # a new run's folder: absent
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = train.parse_args([*flags, '--output-dir', str(missing)])
        return args, train.resolve_config(args)
    except SystemExit as e:
        message = errors.getvalue().strip().splitlines()[-1:] or [str(e.code)]
        sys.exit(f'{where}: {message[0].split("error: ", 1)[-1]}')


def _value(v) -> str:
    text = str(v).lower() if isinstance(v, bool) else str(v)
    return re.sub(r'[^\w.+-]', '_', text)


def plan(models: list, seeds: list, dataset: str, settings: list, extra: list, root: Path) -> list:
    """Every run of the sweep, in the order they start (seed by seed, so pairs of models finish together)."""
    train = _train_module()
    runs = []
    for seed, model, flags in itertools.product(seeds, models, set_flags(settings)):
        base = ['--model', model, '--dataset', dataset, '--seed', str(seed)]
        args, config = _resolve(train, [*base, *flags, *extra], f'{model} seed {seed} with {shlex.join(flags + extra)}')
        recipe = config.get('recipe', 'paper')
        named = recipe in train.RECIPES  # else the choices show among the changed settings
        _, default = _resolve(train, [*base, '--recipe', recipe] if named else base, f'{model}')
        changed = [f'{k}={_value(v)}' for k, v in config.items()
                   if k not in NOT_RECIPE and k != 'recipe' and v != default.get(k)]
        label = ([recipe] if named and (recipe != 'paper' or not changed) else []) + changed
        name = '.'.join([model, config['dataset'], ','.join(label), f'seed{seed}'])
        runs.append(Run(name, root / name, [*base, *flags, *extra]))
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        sys.exit(f'two runs of the sweep have the same name: {sorted(n for n in names if names.count(n) > 1)[0]}')
    return runs


# found before any run starts: the child process, between fork and exec, only calls it
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith('linux') else None


def _die_with_parent() -> None:
    """In a run's process: end when the sweep ends, however it ends (Linux), so a new sweep can resume it."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def _last_line(path: Path) -> str:
    if not path.is_file():
        return ''
    lines = [line.strip() for line in re.split(r'[\r\n]', path.read_text(errors='replace')) if line.strip()]
    return lines[-1] if lines else ''


def _epochs(run_dir: Path) -> tuple:
    """(epochs checkpointed, epochs of the run) as the run directory records them."""
    try:
        done = json.loads((run_dir / 'checkpoints' / 'latest.json').read_text())['epochs_done']
    except (OSError, ValueError, KeyError):
        done = 0
    try:
        total = json.loads((run_dir / 'config.json').read_text())['config']['epochs']
    except (OSError, ValueError, KeyError):
        total = '?'
    return done, total


def _clear_unstarted(run: Run) -> None:
    """Remove the folder of a run killed between making it and recording its config: it holds nothing to resume.

    train.py makes the folder, locks it and writes config.json within milliseconds; a kill in between
    leaves only the lock file (and the sweep's log, kept beside the folder for the next start).
    """
    if not run.dir.is_dir() or (run.dir / 'config.json').exists():
        return
    if {p.name for p in run.dir.iterdir()} <= {'.lock', 'train.log'}:
        if (run.dir / 'train.log').is_file():
            with open(run.dir.with_name(run.name + '.log'), 'a') as pending:
                pending.write((run.dir / 'train.log').read_text(errors='replace'))
            (run.dir / 'train.log').unlink()
        (run.dir / '.lock').unlink(missing_ok=True)
        run.dir.rmdir()


class Launched:
    """One run's training process and where its output goes.

    A new run's output goes to root/<name>.log until train.py has made the run directory, and is then
    moved to train.log in it (the process keeps writing to the same file); a resumed run's output is
    added to its train.log.
    """

    def __init__(self, run: Run, threads: int, minutes_left=None):
        self.run, self.log = run, run.dir / 'train.log'
        _clear_unstarted(run)
        self.resumed = (run.dir / 'config.json').is_file()
        self.pending = None if run.dir.exists() else run.dir.with_name(run.name + '.log')
        command = [sys.executable, str(TRAIN_SCRIPT), *run.flags, '--output-dir', str(run.dir)]
        command += ['--resume'] if self.resumed else []
        command += ['--time-limit', f'{minutes_left:.6g}'] if minutes_left is not None else []
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')
        with open(self.pending or self.log, 'a') as out:
            out.write(f'$ {shlex.join(command)}\n')
            out.flush()
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def settle_log(self) -> None:
        if self.pending is not None and self.run.dir.is_dir():
            os.replace(self.pending, self.log)
            self.pending = None

    def stopped_early(self) -> bool:
        """Ended cleanly without final weights: stopped by --time-limit or --stop-after, checkpointed."""
        return self.process.returncode == 0 and not (self.run.dir / 'model.safetensors').is_file()

    def stopped_for_time_limit(self) -> bool:
        """Stopped because its next epoch would overrun the limit, as train.py's last line says."""
        self.settle_log()
        return self.stopped_early() and _last_line(self.pending or self.log).startswith('--time-limit')

    def status(self) -> tuple[bool, str]:
        """(failed, a line saying how the run ended) once its process has ended."""
        self.settle_log()
        code, log = self.process.returncode, self.pending or self.log
        if code == 0 and (self.run.dir / 'model.safetensors').is_file():
            return False, 'finished'
        if self.stopped_early():
            done, total = _epochs(self.run.dir)
            return False, f'stopped at epoch {done} of {total}, checkpointed (the same command continues it)'
        how = f'killed by {signal.Signals(-code).name}' if code < 0 else f'exit code {code}'
        return True, f'failed ({how}): {_last_line(log) or "no output"} (log: {log})'


def sweep(runs: list, runs_at_once: int, time_limit=None, cores=None, echo=print) -> list[tuple[Run, bool, str]]:
    """Train `runs`, `runs_at_once` at a time; returns (run, failed, status line) for each, in order."""
    cores = cores or available_cores()
    threads = max(1, cores // runs_at_once)
    deadline = time.monotonic() + time_limit * 60 if time_limit else None
    waiting, running, ended = list(runs), [], {}
    limit_reached = False  # a run stopped because its next epoch would not fit: a new one would not fit either
    while waiting or running:
        while waiting and len(running) < runs_at_once:
            run = waiting.pop(0)
            if (run.dir / 'model.safetensors').is_file():
                ended[run.name] = (False, 'finished (before this sweep)')
                continue
            left = None if deadline is None else (deadline - time.monotonic()) / 60
            if left is not None and left <= 0:
                ended[run.name] = (False, f'not started: --time-limit {time_limit:g} min reached')
                continue
            if limit_reached:
                ended[run.name] = (False, f'not started: a run stopped for --time-limit {time_limit:g} min')
                continue
            running.append(Launched(run, threads, left))
            resumed = ', resumed' if running[-1].resumed else ''
            echo(f'started {run.name} ({threads} thread{"s" if threads > 1 else ""}{resumed})')
        time.sleep(0.2)
        for launched in list(running):
            launched.settle_log()
            if launched.process.poll() is not None:
                running.remove(launched)
                ended[launched.run.name] = launched.status()
                limit_reached |= launched.stopped_for_time_limit()
                echo(f'ended {launched.run.name}: {ended[launched.run.name][1]}')
    return [(run, *ended[run.name]) for run in runs]


# --- throughput ----------------------------------------------------------------------------------

def _synthetic(spec, n: int, seed: int):
    """`n` random images of the dataset's stored size, with random labels: what a step costs does not depend on them."""
    from xsep_zoo.data import ImageTensors
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, spec.image_size, spec.image_size), dtype=torch.uint8, generator=generator)
    return ImageTensors(images, torch.randint(0, spec.num_classes, (n,), generator=generator))


def _measure_one(model_name, flags, warmup_steps, seconds, images, threads, seed, barrier, results) -> None:
    """One run in its own process: build it as train.py does, warm up, wait for the others, then count images."""
    try:
        torch.set_num_threads(threads)
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from xsep_zoo.data import DATASETS
        from xsep_zoo.engine import describe_machine, flush_subnormals
        flush_subnormals()
        train = _train_module()
        args, config = _resolve(train, ['--model', model_name, '--seed', str(seed), *flags], 'flags after --')
        accelerator = Accelerator(mixed_precision=config['mixed_precision'])
        config['data_on_device'] = train.data_on_device(config, accelerator.device)
        set_seed(seed)
        spec = DATASETS[config['dataset']]
        model = train.create_model(config, spec, accelerator)
        model, optimizer, batches, _ = train.prepare_training(
            config, model, _synthetic(spec, max(images, config['batch_size']), seed), None, spec, accelerator,
            args.compile)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # any lr costs the same
        stream = (batch for epoch in itertools.count() for batch in batches.epoch(epoch))
        cuda = accelerator.device.type == 'cuda'

        def steps(n: int) -> tuple[int, int]:
            """Train `n` steps; returns the images trained and the host syncs CUDA counted inside the steps."""
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                if cuda:
                    torch.cuda.set_sync_debug_mode('warn')
                loss_sum, seen = train.train_steps(itertools.islice(stream, n), model, optimizer, scheduler,
                                                   accelerator, config, args.compile)
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
            loss_sum.item()  # waits for the device
            return seen, sum('synchroniz' in str(w.message) for w in caught)

        steps(warmup_steps)
        began = time.perf_counter()
        steps(1)
        chunk = max(1, int(0.25 / (time.perf_counter() - began)))  # steps between reads: about a quarter second
        barrier.wait(timeout=1800)
        seen = syncs = count = 0
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            n, s = steps(chunk)
            seen, syncs, count = seen + n, syncs + s, count + chunk
        elapsed = time.perf_counter() - began
        results.put(dict(images_per_s=seen / elapsed, syncs_per_step=syncs / count if cuda else None,
                         machine=describe_machine(1), batch_size=config['batch_size'],
                         data_on_device=config['data_on_device'], compile=args.compile,
                         mixed_precision=config['mixed_precision']))
    except BaseException as e:  # reported by the parent, which stops the others
        lines = traceback.format_exception_only(type(e), e)
        results.put(dict(error=f'{model_name}: {lines[-1].strip() if lines else type(e).__name__}'))
        barrier.abort()


def measure_throughput(model: str, runs_at_once: int, flags=(), warmup_steps: int = 10, seconds: float = 20.0,
                       images: int = 50_000, cores=None) -> dict:
    """Training images/s of `runs_at_once` runs of `model` at the same time, each in its own process.

    Each process builds its run with train.py's functions (and `flags`, as train.py reads them) on
    synthetic images, trains `warmup_steps` (compiling happens there), waits for the others, then
    trains for `seconds` and counts its images: the rates are of steady-state steps, measured in
    one window. Returns {'per_run': [images/s of each], 'total': their sum, ...}. On the CPU, each
    process gets cores // runs_at_once threads.
    """
    cores = cores or available_cores()
    threads = max(1, cores // runs_at_once)
    context = multiprocessing.get_context('spawn')  # CUDA cannot be forked
    barrier, results = context.Barrier(runs_at_once), context.Queue()
    saved = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        workers = [context.Process(target=_measure_one, daemon=True,
                                   args=(model, list(flags), warmup_steps, seconds, images, threads, seed, barrier,
                                         results))
                   for seed in range(runs_at_once)]
        for w in workers:
            w.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    measured = []
    while len(measured) < runs_at_once:
        try:
            measured.append(results.get(timeout=5))
        except queue.Empty:
            if not any(w.is_alive() for w in workers):
                raise RuntimeError(f'the {runs_at_once} measuring processes of {model} ended without a result')
            continue
        if 'error' in measured[-1]:
            for w in workers:
                w.terminate()
            raise RuntimeError(measured[-1]['error'])
    for w in workers:
        w.join()
    rates = [m.pop('images_per_s') for m in measured]
    syncs = [m.pop('syncs_per_step') for m in measured]
    return dict(measured[0], model=model, runs_at_once=runs_at_once, threads=threads, per_run=rates,
                total=sum(rates), syncs_per_step=None if None in syncs else max(syncs))


def throughput_table(rows: list, command: str) -> str:
    """Markdown: a caption with the settings, then one row per (model, runs at once) naming where each run ran."""
    first = rows[0]
    caption = (f'Training images/s, written by `{command}`: batch {first["batch_size"]}, mixed precision '
               f'{first["mixed_precision"]}, compile {first["compile"]}, batches '
               f'{"drawn on the device" if first["data_on_device"] else "from a loader"}, synthetic images; counted '
               'in every run over the same window of steady-state steps, after the warm-up.')
    lines = [caption, '', '| model | runs at once | each run on | images/s per run | images/s summed | '
                          'host syncs per step |', '|---|---:|---|---:|---:|---:|']
    for r in rows:
        per_run = ' / '.join(f'{v:,.0f}' for v in r['per_run'])
        syncs = '-' if r['syncs_per_step'] is None else f'{r["syncs_per_step"]:g}'
        lines.append(f'| `{r["model"]}` | {r["runs_at_once"]} | {r["machine"]} | {per_run} | {r["total"]:,.0f} | '
                     f'{syncs} |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    args, extra = parse_args(argv)
    if args.throughput:
        check_section(args.readme, args.section)
        settings = set_flags(args.set)
        if len(settings) > 1:
            sys.exit('--throughput measures one setting: give --set without comma lists')
        flags = [*extra, '--dataset', args.dataset, *settings[0]]
        rows = []
        for model, n in itertools.product(args.models, args.runs_at_once):
            try:
                rows.append(measure_throughput(model, n, flags, args.warmup_steps, args.seconds, args.images,
                                               args.cores))
            except RuntimeError as e:
                sys.exit(f'--throughput: {e}')
        print_and_write(throughput_table(rows, shlex.join(['python', 'scripts/sweep.py', *sys.argv[1:]])) + '\n',
                        args.readme, args.section)
        return
    runs = plan(args.models, args.seeds, args.dataset, args.set, extra, args.root)
    args.root.mkdir(parents=True, exist_ok=True)
    try:
        outcome = sweep(runs, args.runs_at_once[0], args.time_limit, args.cores)
    except KeyboardInterrupt:
        sys.exit('interrupted: the runs stopped with it; the same command continues them')
    print(f'\n{len(runs)} runs in {args.root}:')
    for run, failed, status in outcome:
        print(f'{run.name}: {status}')
    if any(failed for _, failed, _ in outcome):
        sys.exit(f'{sum(failed for _, failed, _ in outcome)} of {len(runs)} runs failed')


if __name__ == '__main__':
    main()
