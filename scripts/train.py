"""Train or fine-tune a zoo model (any timm model) on a Hugging Face dataset with Accelerate.

    accelerate launch scripts/train.py --model mobilenetv3_small_xsep_100 --dataset cifar10 --output-dir runs/x
    python scripts/train.py ... --data-source /path/to/cifar10                # a local copy, offline
    python scripts/train.py --output-dir runs/x --resume                         # continue a killed run
    python scripts/train.py --output-dir runs/x --resume --time-limit 150        # stop, checkpointed, within 150 min

The defaults are the paper's recipe for the dataset (SGD 0.9, wd 6e-5, batch 128, 5 warm-up
epochs then cosine; lr 0.35 and 400 epochs for CIFAR, 0.35 and 20 for SVHN, 0.15 and 200 for
Tiny-ImageNet); every value can be overridden. The run directory keeps the resolved configuration
and the command (config.json), one JSON line per epoch (log.jsonl), a checkpoint per epoch
(checkpoints/) and, at the end, the final weights (model.safetensors; the EMA weights with --ema-decay).
"""
import argparse
import fcntl
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import load as load_weights_only, set_seed
from accelerate.utils.constants import RNG_STATE_NAME
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

import xsep_zoo
from xsep_zoo.data import DATASETS, DataError, load_test, load_train
from xsep_zoo.engine import (
    DeviceBatches, LoaderBatches, describe_machine, evaluate, flush_subnormals, image_loader, mix_seed, warmup_cosine,
)
from xsep_zoo.hub import WEIGHTS_NAME, WeightsError, load_weights_file, load_weights_into, save_weights_file
from xsep_zoo.recipe import (
    HEAD_INITS, PAPER_CHOICES, RECIPES, init_classifier, param_groups, recipe_name, zero_init_last_bn,
)

PAPER_RECIPE = dict(
    batch_size=128, momentum=0.9, weight_decay=6e-5, warmup_epochs=5, drop_rate=0.2,
    label_smoothing=0.0, ema_decay=0.0, mixed_precision='no', channels_last=True, clip_grad=0.0, seed=0,
    eval_batch_size=256, **PAPER_CHOICES,
)
PRESETS = {
    'cifar10': dict(epochs=400, lr=0.35),
    'cifar100': dict(epochs=400, lr=0.35),
    'svhn': dict(epochs=20, lr=0.35),
    'tiny_imagenet': dict(epochs=200, lr=0.15),
}
# The settings a run can train with, checked before anything is created: (test, what is allowed).
LIMITS = {
    'epochs': (lambda v: v >= 1, 'at least 1'),
    'warmup_epochs': (lambda v: v >= 0, '0 or more'),
    'lr': (lambda v: 0 < v < math.inf, 'a positive number'),
    'batch_size': (lambda v: v >= 1, 'at least 1'),
    'eval_batch_size': (lambda v: v >= 1, 'at least 1'),
    'momentum': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'weight_decay': (lambda v: 0 <= v < math.inf, '0 or more'),
    'drop_rate': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'label_smoothing': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'ema_decay': (lambda v: 0 <= v < 1, 'in [0, 1); 0 = off'),
    'clip_grad': (lambda v: 0 <= v < math.inf, '0 (off) or a positive norm'),
    'train_limit': (lambda v: v is None or v >= 1, 'at least 1'),
    'test_limit': (lambda v: v is None or v >= 1, 'at least 1'),
    'head_init': (lambda v: v in HEAD_INITS, f'one of {", ".join(HEAD_INITS)}'),
}
# What a resumed run may set differently from the run it continues: where it is, and how fast it runs.
RESUME_FREE = ('resume', 'output_dir', 'compile', 'time_limit', 'stop_after')
COMPILE_MODES = ('off', 'default', 'reduce-overhead', 'max-autotune')
EMA_NAME = 'ema.safetensors'  # in each checkpoint, beside Accelerate's files


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', help='a registered timm model name (default: mobilenetv3_small_xsep_100)')
    p.add_argument('--dataset', choices=sorted(DATASETS), help='dataset and recipe preset (default: cifar10)')
    p.add_argument('--data-source', help='local dataset folder in the Hub layout (default: the Hub id)')
    p.add_argument('--train-limit', type=int, help='train on a seeded random subset of this many images')
    p.add_argument('--test-limit', type=int, help='test on a seeded random subset of this many images')
    p.add_argument('--output-dir', required=True, type=Path, help='run directory; must not exist unless --resume')
    p.add_argument('--resume', action='store_true', help='continue the run in --output-dir from its last checkpoint')
    p.add_argument('--compile', choices=COMPILE_MODES, default='off',
                   help="torch.compile mode for the model (default off); 'reduce-overhead' adds CUDA graphs on GPU")
    p.add_argument('--data-on-device', action=argparse.BooleanOptionalAction,
                   help='hold the training set on the device, which draws each epoch\'s order and crops at once '
                        'from one generator per epoch (default: on for CUDA, off on the CPU; the run keeps its choice)')
    p.add_argument('--time-limit', type=float, metavar='MINUTES',
                   help='stop, checkpointed, after the last epoch that ends within this many minutes (at least one '
                        'epoch runs); continue with --resume')
    p.add_argument('--stop-after', type=int, metavar='EPOCHS',
                   help='stop, checkpointed, once this many epochs of the schedule are done (a short look at a '
                        'long run: the epochs are those of the full run)')
    g = p.add_argument_group('recipe (default: the paper\'s, per dataset)')
    g.add_argument('--recipe', choices=sorted(RECIPES), help='a named recipe: changes to the paper\'s (default paper)')
    g.add_argument('--epochs', type=int)
    g.add_argument('--warmup-epochs', type=int)
    g.add_argument('--lr', type=float, help='peak learning rate for the global batch')
    g.add_argument('--batch-size', type=int, help='global batch size, split over processes')
    g.add_argument('--momentum', type=float)
    g.add_argument('--weight-decay', type=float)
    g.add_argument('--drop-rate', type=float, help='dropout before the classifier (default 0.2)')
    g.add_argument('--label-smoothing', type=float, help='default 0 (off)')
    g.add_argument('--ema-decay', type=float, help='weight EMA decay; 0 = off (default)')
    g.add_argument('--mixed-precision', choices=['no', 'bf16', 'fp16'], help='default no')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction,
                   help='channels_last memory format (default on: 2-2.7x faster on CPU, same math)')
    g.add_argument('--clip-grad', type=float, help='max gradient norm; 0 = off (default)')
    g.add_argument('--head-init', choices=HEAD_INITS,
                   help="classifier init: timm's uniform (default) or the first author's N(0, 0.001)")
    g.add_argument('--zero-init-last', action=argparse.BooleanOptionalAction, default=None,
                   help='start the last BatchNorm scale of every residual block at 0 (default: no)')
    g.add_argument('--norm-bias-decay', action=argparse.BooleanOptionalAction, default=None,
                   help='weight decay on BatchNorm parameters and biases too (default: yes, as the paper)')
    g.add_argument('--seed', type=int)
    g.add_argument('--eval-batch-size', type=int)
    f = p.add_argument_group('fine-tuning')
    f.add_argument('--pretrained', action='store_true', default=None,
                   help="start from the model's timm pretrained weights")
    f.add_argument('--init-from',
                   help='start from a zoo checkpoint: run dir, checkpoint dir, Hub folder or .safetensors')
    args = p.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        p.error(f'--stop-after must be at least 1 epoch, not {args.stop_after}')
    if args.time_limit is not None and args.time_limit <= 0:
        p.error(f'--time-limit must be a positive number of minutes, not {args.time_limit:g}')
    return args


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's configuration: the saved one when resuming, else recipe < preset < flags."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in RESUME_FREE}
    config_path = args.output_dir / 'config.json'
    if args.resume:
        saved = _saved_run(args.output_dir)
        # a run from before these choices existed trained with the paper's and with batches from a loader
        for key, value in {**PAPER_CHOICES, 'data_on_device': False}.items():
            saved.setdefault(key, value)
        changed = {k: (saved.get(k), v) for k, v in given.items() if saved.get(k) != v}
        if changed:
            sys.exit(f'--resume continues the saved run; these flags differ from it (saved, given): {changed}')
        return saved
    if args.output_dir.exists():
        sys.exit(f'{args.output_dir} exists; pass --resume to continue that run, or choose another --output-dir')
    dataset = given.get('dataset', 'cifar10')
    config = dict(model='mobilenetv3_small_xsep_100', dataset=dataset, data_source=None, train_limit=None,
                  test_limit=None, pretrained=False, init_from=None, data_on_device=None, recipe='paper',
                  **PAPER_RECIPE, **PRESETS[dataset])
    config.update(RECIPES[given.get('recipe', 'paper')])  # after the dataset preset, before the flags
    config.update(given)
    config['recipe'] = recipe_name(config)  # what the choices are, whichever flags made them
    for key, (allowed, what) in LIMITS.items():
        if not allowed(config[key]):
            sys.exit(f'--{key.replace("_", "-")} {config[key]}: must be {what}')
    return config


def _saved_run(run_dir: Path) -> dict:
    """The configuration of the run in `run_dir`, once it is sure the run can continue where it stopped."""
    config_path, pointer = run_dir / 'config.json', run_dir / 'checkpoints' / 'latest.json'
    if not config_path.is_file():
        sys.exit(f'--resume: {config_path} not found; nothing to resume in {run_dir}')
    try:
        record = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        sys.exit(f'--resume: {config_path} is not valid JSON ({e}); it is the record scripts/train.py wrote')
    if not isinstance(record, dict) or 'config' not in record:
        sys.exit(f'--resume: {run_dir} is not a training run (its config.json holds no training record); '
                 'to start from the weights of a Hub folder, train a new run with --init-from')
    if not pointer.is_file():
        # Killed before its first checkpoint was complete, a run starts again from epoch 1 (the log may hold that
        # epoch: it is written first). More than that means the checkpoints were removed: nothing to continue from.
        log = run_dir / 'log.jsonl'
        logged = len(log.read_text().splitlines()) if log.is_file() else 0
        if logged > 1 or (run_dir / WEIGHTS_NAME).is_file():
            sys.exit(f'--resume: {run_dir} has trained {logged} epochs but holds no checkpoint ({pointer} not '
                     'found), so it cannot continue where it stopped; train it again in a new --output-dir')
    return record['config']


class Checkpoints:
    """One checkpoint per epoch, each complete before it becomes the latest, and loaded without running code.

    Accelerate writes into a temporary folder that is renamed into place; only then does the
    `latest` pointer (replaced atomically) move to it and older checkpoints go. A kill at any
    moment leaves the previous latest checkpoint intact. Accelerate stores the model as
    safetensors and reads the optimizer and RNG states with PyTorch's weights-only unpickler; the
    EMA weights are one more safetensors file, and no object is registered with Accelerate, whose
    own pickles of registered objects are unpickled in full (a crafted one would run code).
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, keep: int = 1):
        self.accelerator, self.root, self.keep = accelerator, run_dir / 'checkpoints', keep
        self.pointer = self.root / 'latest.json'

    def latest(self):
        if not self.pointer.is_file():
            return None
        return json.loads(self.pointer.read_text())

    def save(self, epoch: int, ema=None) -> None:
        acc = self.accelerator
        name, tmp = f'epoch-{epoch:04d}', self.root / f'.tmp-epoch-{epoch:04d}'
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if ema is not None:
                save_weights_file(ema.state_dict(), tmp / EMA_NAME)
            _write_atomic(tmp / 'progress.json', json.dumps({'epochs_done': epoch}))
            _fsync_tree(tmp)
            final = self.root / name
            shutil.rmtree(final, ignore_errors=True)  # a complete copy left by a run killed before the pointer moved
            tmp.rename(final)
            _write_atomic(self.pointer, json.dumps({'checkpoint': name, 'epochs_done': epoch}))
            for old in sorted(self.root.glob('epoch-*'))[:-self.keep]:
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def load_latest(self, ema=None) -> int:
        """Restore the latest checkpoint; returns the number of epochs it completed.

        A checkpoint that cannot be read whole ends the run with a message naming it, before anything
        in the run folder changes.
        """
        try:
            latest = self.latest()
            if latest is None:  # killed before its first checkpoint: the run starts again
                return 0
            folder, epochs_done = self.root / latest['checkpoint'], int(latest['epochs_done'])
        except (ValueError, TypeError, KeyError) as e:
            sys.exit(f'--resume: {self.pointer} is damaged ({type(e).__name__}: {e}); nothing was changed')
        pickles = sorted(p.name for p in folder.glob('custom_checkpoint_*.pkl'))
        if pickles:
            sys.exit(f'--resume: {folder} holds {", ".join(pickles)}: pickled objects that would run code when '
                     'loaded, and that checkpoints of scripts/train.py do not have. Nothing was loaded or changed; '
                     'delete them only if you know where the checkpoint comes from')
        try:
            rng_state = folder / f'{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl'
            # Accelerate skips an unreadable RNG state with a log line only; the run would not be exact.
            load_weights_only(rng_state)
            self.accelerator.load_state(str(folder))
            if ema is not None:
                ema.load_state_dict(load_weights_file(folder / EMA_NAME))
        except Exception as e:  # any reason the state cannot be read: report it, never train on a part of it
            sys.exit(f'--resume: cannot restore {folder} ({type(e).__name__}: {str(e).strip().splitlines()[0]}); '
                     'the checkpoint is incomplete, damaged or not one of scripts/train.py; nothing was changed')
        return epochs_done


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob('*'):
        if path.is_file():
            with open(path, 'rb') as f:
                os.fsync(f.fileno())


def _claim(run_dir: Path):
    """Hold the run directory while this process trains it: two trainings of one run overwrite each other.

    The lock goes with the returned handle, and with the process however it ends. The file names
    its holder only once `_sign` is called: a resume that is refused leaves the folder as it was.
    """
    handle = open(run_dir / '.lock', 'a+')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        sys.exit(f'{run_dir} is being trained by another process (pid {handle.read().strip() or "unknown"}); '
                 'let it finish or stop it, then resume')
    return handle


def _sign(lock) -> None:
    """Write this process's pid into the held lock file, for the message another training of the run gets."""
    lock.seek(0)
    lock.truncate()
    lock.write(f'{os.getpid()}\n')
    lock.flush()


def _git_commit():
    """The repository's commit (with '+changes' when the tree differs from it), or None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ('+changes' if dirty.stdout.strip() else '')


def _truncate_log(log_path: Path, epochs_done: int) -> None:
    """Drop log lines of epochs after the checkpoint: a resumed run does them again."""
    if log_path.is_file():
        lines = [line for line in log_path.read_text().splitlines() if json.loads(line)['epoch'] <= epochs_done]
        _write_atomic(log_path, ''.join(line + '\n' for line in lines))


class TimeLimit:
    """Ends a run after the last epoch that fits in the time it was given, checkpointed rather than killed.

    The next epoch is assumed to take as long as the longest one so far (the first includes compiling).
    """

    def __init__(self, minutes=None):
        self.minutes, self.began, self.longest = minutes, time.monotonic(), 0.0

    def another_epoch_fits(self, epoch_seconds: float) -> bool:
        self.longest = max(self.longest, epoch_seconds)
        return self.minutes is None or time.monotonic() - self.began + self.longest <= self.minutes * 60


def create_model(config: dict, spec, accelerator: Accelerator) -> torch.nn.Module:
    """The run's model as it starts: timm's, pretrained or from a zoo checkpoint when asked, with the recipe's init."""
    try:
        model = timm.create_model(config['model'], num_classes=spec.num_classes, drop_rate=config['drop_rate'],
                                  pretrained=bool(config['pretrained']))
        if config['init_from']:
            weights, skipped = load_weights_into(model, config['init_from'], new_head_ok=True)
            accelerator.print(f'initialized from {weights}' + (f' (new head: {", ".join(skipped)})' if skipped else ''))
        elif not config['pretrained']:
            init_classifier(model, config['head_init'], config['seed'])
            if config['zero_init_last']:
                zero_init_last_bn(model)
    except WeightsError as e:
        sys.exit(str(e))
    return model


def create_optimizer(model: torch.nn.Module, config: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, config['weight_decay'], config['norm_bias_decay'])
    return torch.optim.SGD(groups, lr=config['lr'], momentum=config['momentum'])


def data_on_device(config: dict, device: torch.device) -> bool:
    """Whether a run holds its training set on the device: as the config says, else on CUDA only.

    Off on the CPU by default, so that the commands of runs trained there (from a loader) train the same again.
    """
    return device.type == 'cuda' if config.get('data_on_device') is None else config['data_on_device']


def prepare_training(config: dict, model, train, test, spec, accelerator: Accelerator, compile_mode: str = 'off'):
    """The model (compiled if asked), optimizer, training batches and test loader, prepared by Accelerate.

    `test` may be None (no test loader). The training batches come from the device or from a loader,
    as `config['data_on_device']` says; both give each process its part of every step.
    """
    world = accelerator.num_processes
    memory_format = torch.channels_last if config['channels_last'] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_mode != 'off':
        model.compile(mode=compile_mode)  # in place: the state_dict keeps its keys
    optimizer = create_optimizer(model, config)
    test_loader = image_loader(test, config['eval_batch_size'] // world) if test is not None else None
    if config['data_on_device']:
        model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
        batches = DeviceBatches(train, spec, config['batch_size'] // world, accelerator.device, config['seed'],
                                accelerator.process_index, world, config['channels_last'])
    else:
        train_loader = image_loader(train, config['batch_size'] // world, shuffle_seed=config['seed'])
        model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
        batches = LoaderBatches(train_loader, spec, config['seed'], accelerator.device, accelerator.process_index,
                                config['channels_last'])
    return model, optimizer, batches, test_loader


def train_steps(batches, model, optimizer, scheduler, accelerator: Accelerator, config: dict,
                compile_mode: str = 'off', ema=None, first_step: int = 0):
    """Train on `batches` ((inputs, labels) on the device); returns the summed loss, a device tensor, and the count.

    Nothing here reads a value back from the device, so the host queues steps ahead of it; the
    caller reads the loss once per epoch.
    """
    loss_sum, seen = torch.zeros((), device=accelerator.device), 0
    for step, (inputs, labels) in enumerate(batches, first_step):
        if compile_mode == 'reduce-overhead':
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
        loss = F.cross_entropy(model(inputs), labels, label_smoothing=config['label_smoothing'])
        accelerator.backward(loss)
        if config['clip_grad'] > 0:
            accelerator.clip_grad_norm_(model.parameters(), config['clip_grad'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema.update(accelerator.unwrap_model(model), step=step)
        loss_sum += loss.detach() * labels.numel()
        seen += labels.numel()
    return loss_sum, seen


def training_function(config: dict, run_dir: Path, resume: bool, compile_mode: str = 'off',
                      time_limit=None, stop_after=None) -> None:
    limit = TimeLimit(time_limit)
    # First, before any op starts the thread pool: values below 1.2e-38 become 0 (see flush_subnormals).
    flushed = flush_subnormals()
    accelerator = Accelerator(mixed_precision=config['mixed_precision'])
    flush_denormal = accelerator.device.type == 'cpu' and flushed
    config['data_on_device'] = data_on_device(config, accelerator.device)  # recorded: a resumed run keeps it
    set_seed(config['seed'])
    spec = DATASETS[config['dataset']]
    world = accelerator.num_processes
    if config['batch_size'] % world:
        sys.exit(f'--batch-size {config["batch_size"]} must be divisible by the {world} processes')

    if accelerator.is_main_process and resume:
        lock = _claim(run_dir)  # held while this function runs

    # Everything that can fail on a user's settings or data happens before a new run's folder exists.
    try:
        train = load_train(
            config['dataset'], source=config['data_source'], limit=config['train_limit'], seed=config['seed'])
        test = load_test(config['dataset'], source=config['data_source'], limit=config['test_limit'])
    except DataError as e:
        sys.exit(str(e))
    if len(train) < config['batch_size']:
        sys.exit(f'{len(train)} training images make no full batch of --batch-size {config["batch_size"]}')
    model = create_model(config, spec, accelerator)

    if accelerator.is_main_process and not resume:
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            sys.exit(f'{run_dir} was created by another process meanwhile; choose another --output-dir')
        lock = _claim(run_dir)  # held while this function runs
        _sign(lock)
        launcher = ['accelerate', 'launch', '--num_processes', str(world)] if world > 1 else ['python']
        record = dict(config=config, command=shlex.join(launcher + sys.argv), argv=sys.argv, num_processes=world,
                      machine=describe_machine(world),
                      versions=dict(xsep_zoo=xsep_zoo.__version__, git=_git_commit(), timm=timm.__version__,
                                    torch=torch.__version__))
        _write_atomic(run_dir / 'config.json', json.dumps(record, indent=2) + '\n')
    accelerator.wait_for_everyone()

    model, optimizer, batches, test_loader = prepare_training(config, model, train, test, spec, accelerator,
                                                              compile_mode)
    steps_per_epoch = len(batches)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config['ema_decay']) if config['ema_decay'] > 0 else None

    checkpoints = Checkpoints(accelerator, run_dir)
    log_path = run_dir / 'log.jsonl'
    start_epoch = checkpoints.load_latest(ema) if resume else 0
    # The schedule is a function of the step, so a resumed run needs no saved scheduler state.
    schedule = warmup_cosine(config['warmup_epochs'] * steps_per_epoch, config['epochs'] * steps_per_epoch)
    steps_done = start_epoch * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(steps_done + step))
    if accelerator.is_main_process:
        if resume:
            _sign(lock)
        _truncate_log(log_path, start_epoch)
        for stale in run_dir.glob('checkpoints/.tmp-*'):
            shutil.rmtree(stale)
    # Logged with every epoch: a resumed run may continue on another machine.
    where = dict(machine=describe_machine(world), flush_denormal=flush_denormal)
    accelerator.print(f'{config["model"]} on {config["dataset"]}: {len(train)} train / {len(test)} test images, '
                      f'{steps_per_epoch} steps per epoch, epochs {start_epoch + 1}..{config["epochs"]}'
                      + (', batches drawn on the device' if config['data_on_device'] else ''))

    for epoch in range(start_epoch, config['epochs']):
        model.train()
        if config['data_on_device']:  # dropout's masks too are a function of (seed, epoch, rank)
            torch.manual_seed(mix_seed(config['seed'], epoch, accelerator.process_index))
        start = time.perf_counter()
        bar = tqdm(batches.epoch(epoch), total=steps_per_epoch, desc=f'epoch {epoch + 1}/{config["epochs"]}',
                   leave=False, disable=not accelerator.is_local_main_process)
        loss_sum, seen = train_steps(bar, model, optimizer, scheduler, accelerator, config, compile_mode, ema,
                                     first_step=epoch * steps_per_epoch)
        train_loss = (accelerator.reduce(loss_sum, 'sum') / (seen * world)).item()  # the epoch's wait for the device
        train_seconds = time.perf_counter() - start
        finite_weights = bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())
        if not (math.isfinite(train_loss) and finite_weights):
            kept = f'the last good checkpoint (epoch {epoch}) stays in {checkpoints.root}' if epoch else 'no checkpoint'
            sys.exit(f'epoch {epoch + 1}: the run diverged (training loss {train_loss:g}, weights '
                     f'{"finite" if finite_weights else "not finite"}); stopped without saving this epoch, {kept}. '
                     'Start a new run with a lower --lr, or with --clip-grad')
        metrics = evaluate(ema.module if ema is not None else model, test_loader, spec, accelerator,
                           config['channels_last'])
        record = dict(epoch=epoch + 1, train_loss=round(train_loss, 5), test_top1=metrics['top1'],
                      test_top5=metrics['top5'], test_loss=round(metrics['loss'], 5), test_count=metrics['count'],
                      lr=scheduler.get_last_lr()[0], images_per_s=round(seen * world / train_seconds, 1),
                      seconds=round(time.perf_counter() - start, 2), **where)
        if accelerator.is_main_process:
            with open(log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        accelerator.print(json.dumps(record))
        checkpoints.save(epoch + 1, ema)
        if stop_after and stop_after <= epoch + 1 < config['epochs']:
            accelerator.print(f'--stop-after {stop_after}: stopped after epoch {epoch + 1} of {config["epochs"]}, '
                              'checkpointed: continue with --resume')
            accelerator.end_training()
            return
        if time_limit and epoch + 1 < config['epochs']:
            fits = torch.tensor(float(limit.another_epoch_fits(time.perf_counter() - start)), device=accelerator.device)
            if accelerator.reduce(fits, 'sum').item() < world:  # every process stops after the same epoch
                accelerator.print(f'--time-limit {time_limit:g} min: epoch {epoch + 2} would not end in time; '
                                  f'stopped after epoch {epoch + 1}, checkpointed: continue with --resume')
                accelerator.end_training()
                return

    if accelerator.is_main_process:
        final = ema.module if ema is not None else accelerator.unwrap_model(model)
        save_weights_file(final.state_dict(), run_dir / WEIGHTS_NAME)
    accelerator.end_training()


def main(argv=None) -> None:
    args = parse_args(argv)
    config = resolve_config(args)
    training_function(config, args.output_dir, args.resume, args.compile, args.time_limit, args.stop_after)


if __name__ == '__main__':
    main()
