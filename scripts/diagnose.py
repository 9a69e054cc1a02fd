"""Training dynamics of the family: gradient per stage and top Hessian eigenvalue, at init and after the warm-up.

    python scripts/diagnose.py --data-source /path/to/cifar10 --output diagnose.json \\
        --docs docs/training-dynamics.md                                  # every width-1.0 model, seeds 0 1 2
    python scripts/diagnose.py --models mobilenetv3_small_xsep_050 --seeds 0 --hessian-iters 5 --warmup-steps 20 ...
    python scripts/diagnose.py ... --estimate                             # time one model of each kind, measure nothing
    python scripts/diagnose.py --from-json diagnose.json --docs docs/training-dynamics.md   # the page of a saved run
    python scripts/diagnose.py --from-json diagnose.json --recount-bn --output diagnose.json --docs ...  # and
        # the BatchNorm census of the Hub folders taken again, with those published since

For each model and seed (the seed of scripts/train.py: the same init, data order, crops and dropout):
- the cross-entropy gradient norm per stage (stem = conv_stem + bn1, blocks.0 .. blocks.5, head = conv_head,
  classifier) on one fixed training batch (the first batch of the seed --batch-seed run, augmented as in
  training; model in train mode, dropout on), with timm's classifier init and with the first author's
  N(0, 0.001) one; XSepConv models also relative to their DW partner at the same seed;
- the top Hessian eigenvalue of that loss w.r.t. all parameters: Lanczos iteration on exact Hessian-vector
  products (double backward), with its change over the last iteration;
- for --warmup-models, the same after --warmup-steps steps of the recipe (SGD 0.9, wd 6e-5, lr rising
  linearly to --lr): the first steps of scripts/train.py with that seed (its epoch-1 training loss is
  reproduced exactly; a --train-limit subset is drawn with seed 0 here, with the run's seed there). Also
  the loss trajectory (blown up: a loss above 1.5 ln 10 after step 50, or not finite) and test top-1 on
  --test-limit images, with running and with batch BatchNorm statistics;
- from the published Hub folders (--hub-root), the fraction of BatchNorm scales with |gamma| < 1e-3 (epochs and
  seed from each folder's record, xsep_zoo.json).
--docs writes a page comparing DW and every XSepConv variant; its verdicts on the hypotheses are computed
from the numbers with the thresholds below. The Hessian is measured in contiguous memory format, with
hard-sigmoid written as clamp(x + 3, 0, 6) / 6 (same values; torch has no second derivative for its
own), and excludes weight decay (it would add 6e-5 to every eigenvalue).
"""
import argparse
import copy
import json
import math
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import xsep_zoo
from xsep_zoo import MODELS
from xsep_zoo.data import DATASETS, DataError, DatasetSpec, ImageTensors, load_test, load_train
from xsep_zoo.engine import (
    describe_machine, flush_subnormals, image_loader, prepare_images, step_generator, warmup_cosine,
)
from xsep_zoo.hub import RECORD_NAME, WEIGHTS_NAME, WeightsError, load_weights_file, read_record
from xsep_zoo.recipe import HEAD_INITS, NORMAL_HEAD_STD, init_classifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = tuple(name for name, m in MODELS.items() if m.multiplier == 1.0)
DEFAULT_WARMUP_MODELS = ('mobilenetv3_small_dw_100', 'mobilenetv3_small_xsep_100')
RECIPE = dict(lr=0.35, momentum=0.9, weight_decay=6e-5, drop_rate=0.2, batch_size=128)
SCHEDULE_EPOCHS = 20  # the zoo's CPU recipe: the warm-up belongs to a 20-epoch cosine schedule

# --- what the page concludes, and from which thresholds --------------------------------------------------------
FIRST_BLOCKS = 'blocks.0'  # "the gradient reaching the first blocks"
ABOUT = 1.15  # "about x": a mean within x / 1.15 .. x * 1.15
ORDER_OF_MAGNITUDE = (10 ** 0.5, 10 ** 1.5)  # "about an order of magnitude higher": a ratio of 3.2x .. 32x
CONVERGED = 1e-2  # a Lanczos iteration whose last step moved the estimate by more than this (relative) did not converge
BLOWUP_LOSS = 1.5 * math.log(10)  # 1.5 x the loss of a uniform guess over 10 classes
BLOWUP_AFTER = 50  # steps: the loss at init may be above it
HEAD_MORE = 1.5  # "sends more gradient into the body": every (model, seed) at least 1.5x
COLLAPSED = 1e-3  # a BatchNorm scale |gamma| below this is collapsed
LONG_RUN_COLLAPSE = (0.30, 0.50)  # "about 40 %" of the BN scales of the 400-epoch runs
LONG_RUN_EPOCHS = 100  # runs at least this long are the "long" ones
SHORT_RUN_NONE = 1e-3  # "none" in the shorter runs: fewer than 0.1 % of the scales (a scale may pass near 0)
MOSTLY = 0.5  # a layer with at least half of its scales collapsed is listed with its fraction


@dataclass(frozen=True)
class GradientClaim:
    """One sentence of hypothesis 1: the gradient at FIRST_BLOCKS relative to DW for these models."""
    what: str
    models: tuple[str, ...]
    low: float
    high: float


GRADIENT_CLAIMS = (
    GradientClaim('XSepConv with three convs in series (standard, B, grouped or one-sided padding)',
                  ('mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_b_100',
                   'mobilenetv3_small_xsep_sympad_100', 'mobilenetv3_small_xsep_asympad_100'), 2.6, 2.8),
    GradientClaim('XSepConv-P and XSepConv without its 2x2 conv',
                  ('mobilenetv3_small_xsep_p_100', 'mobilenetv3_small_xsep_no2x2_100'), 1.5, 1.5),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                   help='family members (default: every width-1.0 one); the DW partner of each XSepConv model is '
                        'added when missing')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], help='training seeds (default 0 1 2)')
    p.add_argument('--dataset', choices=sorted(DATASETS), default='cifar10')
    p.add_argument('--data-source', help='local dataset folder in the Hub layout (default: the Hub id)')
    p.add_argument('--train-limit', type=int, help='use a seeded random subset of this many training images')
    p.add_argument('--batch-size', type=int, default=RECIPE['batch_size'], help='measured batch and training batch')
    p.add_argument('--batch-seed', type=int, default=0,
                   help='the measured batch is the first one of the run with this seed, the same for every model')
    p.add_argument('--head-init', nargs='+', choices=HEAD_INITS, default=list(HEAD_INITS),
                   help="classifier inits whose gradient is measured at init; the Hessian and the warm-up use the "
                        "first (default: timm normal)")
    p.add_argument('--hessian-iters', type=int, default=20, help='most Lanczos iterations per Hessian (default 20)')
    p.add_argument('--hessian-tol', type=float, default=1e-5,
                   help='stop once an iteration moves the estimate by less than this, relative (default 1e-5)')
    p.add_argument('--warmup-models', nargs='*', default=list(DEFAULT_WARMUP_MODELS),
                   help='models trained through the warm-up and measured again (none: skip; default: dw_100, xsep_100)')
    p.add_argument('--warmup-steps', type=int, help='warm-up steps (default: one epoch, 390 on CIFAR-10)')
    p.add_argument('--peak-steps', type=int, default=0,
                   help='steps after the warm-up, on the cosine schedule of a 20-epoch run (default 0)')
    p.add_argument('--lr', type=float, default=RECIPE['lr'], help='peak learning rate (default 0.35)')
    p.add_argument('--test-limit', type=int, default=2000,
                   help='test images for top-1 after the warm-up (0: skip; default 2000)')
    p.add_argument('--hub-root', type=Path, default=ROOT / 'hub_cards',
                   help='Hub folders whose BatchNorm scales are counted (default: hub_cards/)')
    p.add_argument('--threads', type=int, help='CPU threads (default: torch\'s, e.g. from OMP_NUM_THREADS)')
    p.add_argument('--estimate', action='store_true', help='time one model of each kind, print the estimate, stop')
    p.add_argument('--output', type=Path, help='also write every measurement as JSON here')
    p.add_argument('--docs', type=Path, help='write the markdown page here')
    p.add_argument('--from-json', type=Path, help='measure nothing: write the page (--docs) of a saved --output')
    p.add_argument('--recount-bn', action='store_true',
                   help='with --from-json: count the collapsed BatchNorm scales of the --hub-root folders again '
                        '(seconds; folders published since are added), keeping every other measurement; '
                        '--output saves the result')
    args = p.parse_args(argv)
    if args.from_json and not args.docs:
        p.error('--from-json writes a page: pass --docs')
    if args.recount_bn and not args.from_json:
        p.error('--recount-bn updates a saved run: pass --from-json (a full run counts them anyway)')
    for name in ('batch_size', 'hessian_iters'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be at least 1')
    for name in ('warmup_steps', 'train_limit'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.peak_steps < 0 or args.test_limit < 0:
        p.error('--peak-steps and --test-limit must be 0 or more')
    unknown = [m for m in [*args.models, *args.warmup_models] if m not in MODELS]
    if unknown:
        p.error(f'not family members: {", ".join(unknown)}; allowed: {", ".join(MODELS)}')
    return args


# --- measuring ---------------------------------------------------------------------------------------------------

def stage_of(name: str) -> str:
    """The stage a MobileNetV3 parameter belongs to: stem, blocks.<i>, head or classifier."""
    parts = name.split('.')
    if parts[0] in ('conv_stem', 'bn1'):
        return 'stem'
    if parts[0] == 'blocks':
        return f'blocks.{parts[1]}'
    if parts[0] in ('conv_head', 'norm_head'):
        return 'head'
    if parts[0] == 'classifier':
        return 'classifier'
    raise ValueError(f'parameter {name!r} is in no stage (stem, blocks.<i>, head, classifier)')


def stage_norms(named_grads: Sequence[tuple[str, torch.Tensor]], stage: Callable[[str], str] = stage_of) -> dict:
    """L2 norm of the gradient per stage (in order of appearance), of the body (all but the classifier) and total."""
    squares: dict[str, float] = {}
    for name, g in named_grads:
        key = stage(name)
        squares[key] = squares.get(key, 0.0) + float(g.detach().double().pow(2).sum())
    norms = {k: math.sqrt(v) for k, v in squares.items()}
    norms['body'] = math.sqrt(sum(v for k, v in squares.items() if k != 'classifier'))
    norms['total'] = math.sqrt(sum(squares.values()))
    return norms


class TwiceDifferentiable(TorchFunctionMode):
    """Hard-sigmoid as clamp(x + 3, 0, 6) / 6, the same values: torch has no derivative for hardsigmoid_backward."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.hardsigmoid:
            return (args[0] + 3).clamp(0, 6) / 6
        return func(*args, **(kwargs or {}))


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _lanczos(matvec: Callable, v: list[torch.Tensor], iters: int, tol: float) -> tuple[list[float], list[float]]:
    """Largest and smallest Ritz values of `matvec` after each Lanczos step from the unit vector `v`.

    The extreme Ritz values converge to the extreme eigenvalues far faster than a power iteration, whichever
    end has the larger magnitude. The basis is reorthogonalised in full (twice), so no ghost copies appear.
    Stops once a step moves the largest value by less than `tol`, relative, or the space is exhausted.
    """
    basis, alphas, betas, tops, bottoms = [v], [], [], [], []
    for _ in range(iters):
        w = list(matvec(basis[-1]))
        alphas.append(_dot(w, basis[-1]))
        for _ in range(2):
            for b in basis:
                c = _dot(w, b)
                w = [x - c * y for x, y in zip(w, b)]
        tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        ritz = np.linalg.eigvalsh(tridiagonal)
        tops.append(float(ritz[-1]))
        bottoms.append(float(ritz[0]))
        beta = math.sqrt(_dot(w, w))
        converged = len(tops) > 1 and abs(tops[-1] - tops[-2]) <= tol * abs(tops[-1])
        if converged or not math.isfinite(beta) or beta <= 1e-10 * max(abs(tops[-1]), abs(bottoms[-1]), 1e-30):
            break
        betas.append(beta)
        basis.append([x / beta for x in w])
    return tops, bottoms


def _change(history: Sequence[float]) -> float:
    last = history[-1]
    return abs(history[-1] - history[-2]) / abs(last) if len(history) > 1 and last != 0 else math.nan


def top_hessian_eigenvalue(
        grads: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor],
        iters: int,
        tol: float = 0.0,
        seed: int = 0,
) -> dict:
    """The largest eigenvalue of the Hessian, by Lanczos iteration on exact Hessian-vector products.

    `grads` are d loss / d `params` built with create_graph=True. Returns the estimate, its relative change
    over the last iteration, the iterations run (one Hessian-vector product each; a run stops early once an
    iteration changes the estimate by less than `tol`, relative), the estimates in order, and the smallest
    eigenvalue's estimate (which may be negative, and larger in magnitude: that does not hinder Lanczos).
    """
    generator = torch.Generator().manual_seed(seed)
    start = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = math.sqrt(_dot(start, start))
    start = [x / norm for x in start]

    def hvp(v):
        return torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)

    tops, bottoms = _lanczos(hvp, start, iters, tol)
    return dict(eigenvalue=tops[-1], last_change=_change(tops), iterations=len(tops), history=tops,
                smallest=bottoms[-1])


def measure(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, hessian_iters: int, hessian_tol: float,
            seed: int) -> dict:
    """Loss, per-stage gradient norms and (hessian_iters > 0) the top Hessian eigenvalue of `model` on one batch.

    Works on a copy in train mode and contiguous format, its dropout mask drawn from `seed`, inside a forked
    RNG: the model, its BatchNorm statistics and the global random stream are left as they were.
    """
    probe = copy.deepcopy(model).to(memory_format=torch.contiguous_format).train()
    names, params = zip(*[(n, p) for n, p in probe.named_parameters() if p.requires_grad])
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), TwiceDifferentiable():
        torch.manual_seed(seed)
        loss = F.cross_entropy(probe(inputs.contiguous()), labels)
        grads = torch.autograd.grad(loss, params, create_graph=hessian_iters > 0)
        result = dict(loss=loss.item(), grad_norms=stage_norms(list(zip(names, grads))))
        result['grad_seconds'] = time.perf_counter() - start
        if hessian_iters > 0:
            result['hessian'] = top_hessian_eigenvalue(grads, params, hessian_iters, hessian_tol, seed)
    result['seconds'] = time.perf_counter() - start
    return result


def seed_everything(seed: int) -> None:
    """What scripts/train.py does before creating the model (accelerate's set_seed, on the CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def create(name: str, seed: int, num_classes: int, drop_rate: float) -> nn.Module:
    """The model scripts/train.py trains with this seed, at its init, in channels_last format."""
    seed_everything(seed)
    model = timm.create_model(name, num_classes=num_classes, drop_rate=drop_rate)
    return model.to(memory_format=torch.channels_last)


def with_head_init(model: nn.Module, head_init: str, seed: int) -> nn.Module:
    """A copy of `model` with the classifier initialised as `head_init` says ('timm': as it is)."""
    if head_init == 'timm':
        return model
    model = copy.deepcopy(model)
    init_classifier(model, head_init, seed)  # as scripts/train.py --head-init does
    return model


def head_stats(model: nn.Module) -> dict:
    w = model.classifier.weight.detach()
    return dict(weight_std=float(w.std()), weight_max_abs=float(w.abs().max()), fan_in=w.shape[1], fan_out=w.shape[0])


def fixed_batch(train: ImageTensors, spec: DatasetSpec, batch_size: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of the run with `seed`, augmented as scripts/train.py does; global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        images, labels = next(iter(image_loader(train, batch_size, shuffle_seed=seed)))
    generator = step_generator(torch.device('cpu'), seed, 0, 0, 0)
    return prepare_images(images, spec, True, generator), labels


def warm_up(model: nn.Module, train: ImageTensors, spec: DatasetSpec, seed: int, steps: int, peak_steps: int,
            lr: float, batch_size: int, steps_per_epoch: int, on_warmed_up: Callable[[], None]) -> dict:
    """Train `model` as scripts/train.py does with this seed: `steps` of linear warm-up to `lr`, then `peak_steps`
    on the cosine schedule of a SCHEDULE_EPOCHS run; `on_warmed_up` runs after the warm-up. Returns the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=RECIPE['momentum'],
                                weight_decay=RECIPE['weight_decay'])
    schedule = warmup_cosine(steps, SCHEDULE_EPOCHS * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loader = image_loader(train, batch_size, shuffle_seed=seed)
    model.train()
    losses: list[float] = []
    start, epoch, warm_seconds = time.perf_counter(), 0, None
    while len(losses) < steps + peak_steps:
        loader.sampler.set_epoch(epoch)
        for step, (images, labels) in enumerate(loader):
            generator = step_generator(torch.device('cpu'), seed, epoch, step, 0)
            loss = F.cross_entropy(model(prepare_images(images, spec, True, generator)), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            if len(losses) == steps:
                warm_seconds = time.perf_counter() - start
                on_warmed_up()
            if len(losses) == steps + peak_steps:
                break
        if not math.isfinite(losses[-1]) or len(losses) == steps + peak_steps:
            break
        # scripts/train.py evaluates after every epoch: its test loader draws one number (a base seed) from the
        # global stream, and the dropout masks of the next epoch come after it
        torch.empty((), dtype=torch.int64).random_()
        epoch += 1
    return dict(losses=losses, seconds=time.perf_counter() - start, warmup_seconds=warm_seconds,
                **trajectory(losses, steps))


def trajectory(losses: Sequence[float], warmup_steps: int) -> dict:
    """Summary of a loss trajectory: max after BLOWUP_AFTER, final (mean of the last 10), first blow-up step."""
    late = [(i, x) for i, x in enumerate(losses) if i >= BLOWUP_AFTER or not math.isfinite(x)]
    bad = [i for i, x in late if not math.isfinite(x) or x > BLOWUP_LOSS]
    warm = losses[:warmup_steps]
    tail = losses[-10:]
    return dict(
        steps=len(losses), first_loss=losses[0] if losses else math.nan,
        max_loss_after=max((x for _, x in late), default=None),  # None: no step after BLOWUP_AFTER
        final_loss=statistics.fmean(tail) if tail else math.nan,
        warmup_final_loss=statistics.fmean(warm[-10:]) if warm else math.nan,
        blew_up=bool(bad), blowup_step=bad[0] if bad else None,
    )


@torch.no_grad()
def top1(model: nn.Module, test: ImageTensors, spec: DatasetSpec, batch_statistics: bool) -> float:
    """Top-1 (%) on `test`: with running BatchNorm statistics (eval mode) or each batch's own (BN in train mode)."""
    probe = copy.deepcopy(model).eval()
    if batch_statistics:
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    correct = 0
    for images, labels in image_loader(test, 250):
        correct += int((probe(prepare_images(images, spec, True)).argmax(1) == labels).sum())
    return 100.0 * correct / len(test)


# --- the published weights ------------------------------------------------------------------------------------

def bn_collapse(folder: Path) -> dict:
    """BatchNorm scales of a Hub folder's weights: how many have |gamma| < COLLAPSED, and the layers where all have."""
    state = load_weights_file(folder / WEIGHTS_NAME)
    layers = sorted(k[:-len('.running_mean')] for k in state if k.endswith('.running_mean') and
                    f'{k[:-len(".running_mean")]}.weight' in state)
    if not layers:
        raise WeightsError(f'{folder / WEIGHTS_NAME}: no BatchNorm layer (no .running_mean with a .weight)')
    total = collapsed = 0
    all_collapsed, mostly, per_stage = [], {}, {}
    for layer in layers:
        small = state[f'{layer}.weight'].abs() < COLLAPSED
        total += small.numel()
        collapsed += int(small.sum())
        stage = stage_of(f'{layer}.weight')
        n, c = per_stage.get(stage, (0, 0))
        per_stage[stage] = (n + small.numel(), c + int(small.sum()))
        if bool(small.all()):
            all_collapsed.append(layer)
        if float(small.double().mean()) >= MOSTLY:
            mostly[layer] = float(small.double().mean())
    record = read_record(folder) if (folder / RECORD_NAME).is_file() else {}  # the epochs and seed, when recorded
    return dict(folder=folder.name, model=record.get('model', folder.name.partition('.')[0]),
                epochs=record.get('epochs'), seed=(record.get('recipe') or {}).get('seed'), bn_scales=total,
                collapsed=collapsed, fraction=collapsed / total, layers_all_collapsed=all_collapsed,
                layers_mostly_collapsed=mostly, per_stage={k: c / n for k, (n, c) in per_stage.items()})


def published_collapse(hub_root: Path) -> list[dict]:
    """bn_collapse of every Hub folder (with a weights file) under `hub_root`."""
    return [bn_collapse(p.parent) for p in sorted(Path(hub_root).glob(f'*/{WEIGHTS_NAME}'))]


# --- the plan, its time, and the run -------------------------------------------------------------------------------

def with_partners(models: Sequence[str]) -> list[str]:
    """`models` in family order, with the DW partner of every XSepConv one."""
    wanted = set(models) | {MODELS[m].dw_partner for m in models if MODELS[m].dw_partner}
    return [m for m in MODELS if m in wanted]


def time_costs(models: Sequence[str], inputs, labels, train, spec, args) -> dict:
    """Seconds per gradient with graph, per Hessian-vector product and per training step, for one DW and one XSepConv
    model of the run (the other models are costed as the one of their kind)."""
    costs = {}
    for kind in ('dw', 'xsep'):
        name = next((m for m in models if (MODELS[m].dw_partner is None) == (kind == 'dw')), None)
        if name is None:
            continue
        model = create(name, 0, spec.num_classes, RECIPE['drop_rate'])
        measure(model, inputs[:2], labels[:2], 1, 0.0, 0)  # first calls allocate
        m = measure(model, inputs, labels, 2, 0.0, 0)
        hvp = (m['seconds'] - m['grad_seconds']) / m['hessian']['iterations']
        t = time.perf_counter()
        warm_up(model, train, spec, 0, 2, 0, args.lr, args.batch_size, 1, lambda: None)
        costs[kind] = dict(model=name, grad=m['grad_seconds'], hvp=hvp, step=(time.perf_counter() - t) / 2)
    return costs


TYPICAL_ITERS = 10  # Lanczos iterations a Hessian at init usually takes to move less than 1e-5 (batch 32 and 128)


def estimate_seconds(models, warmup_models, costs, args, warmup_steps, test_images, hessian_iters: int) -> float:
    """The run's time from `time_costs` with `hessian_iters` per Hessian; an evaluation batch costs a third of a
    step."""
    total = 0.0
    for name in models:
        c = costs['dw' if MODELS[name].dw_partner is None else 'xsep'] if len(costs) > 1 else next(iter(costs.values()))
        measured = c['grad'] + hessian_iters * c['hvp']
        per_seed = measured + (len(args.head_init) - 1) * c['grad']
        if name in warmup_models:
            per_seed += ((warmup_steps + args.peak_steps) * c['step'] + measured
                         + 2 * test_images / args.batch_size * c['step'] / 3)
        total += per_seed * len(args.seeds)
    return total


def run(args: argparse.Namespace) -> dict:
    spec = DATASETS[args.dataset]
    models = with_partners([*args.models, *args.warmup_models])
    added = [m for m in models if m not in args.models and m not in args.warmup_models]
    if added:
        print(f'added DW partners: {", ".join(added)}')
    try:
        train = load_train(args.dataset, source=args.data_source, limit=args.train_limit, seed=0)
        test = load_test(args.dataset, source=args.data_source, limit=args.test_limit, seed=0) \
            if args.test_limit and args.warmup_models else None
    except DataError as e:
        sys.exit(str(e))
    if len(train) < args.batch_size:
        sys.exit(f'{len(train)} training images make no full batch of --batch-size {args.batch_size}')
    steps_per_epoch = len(train) // args.batch_size
    warmup_steps = args.warmup_steps or steps_per_epoch
    inputs, labels = fixed_batch(train, spec, args.batch_size, args.batch_seed)

    costs = time_costs(models, inputs, labels, train, spec, args)
    test_images = len(test) if test else 0
    estimate = estimate_seconds(models, args.warmup_models, costs, args, warmup_steps, test_images, args.hessian_iters)
    typical = estimate_seconds(models, args.warmup_models, costs, args, warmup_steps, test_images,
                               min(args.hessian_iters, TYPICAL_ITERS))
    for kind, c in costs.items():
        print(f'{c["model"]}: gradient {c["grad"]:.2f} s, Hessian-vector product {c["hvp"]:.2f} s, '
              f'training step {c["step"]:.2f} s (batch {args.batch_size}, {torch.get_num_threads()} threads)')
    print(f'time estimate: {len(models)} models x {len(args.seeds)} seeds, {len(args.warmup_models)} warmed up '
          f'over {warmup_steps} + {args.peak_steps} steps: about {typical / 60:.1f} min with {TYPICAL_ITERS} Lanczos '
          f'iterations per Hessian, at most {estimate / 60:.1f} min with all {args.hessian_iters}')
    results = dict(
        command=args.command, machine=describe_machine(), estimate_seconds=estimate, costs=costs,
        versions=dict(xsep_zoo=xsep_zoo.__version__, timm=timm.__version__, torch=torch.__version__),
        config=dict(models=models, seeds=args.seeds, dataset=args.dataset,
                    data_source='/path/to/cifar10' if args.data_source else None,
                    train_images=len(train), batch_seed=args.batch_seed,
                    head_inits=args.head_init, hessian_iters=args.hessian_iters, hessian_tol=args.hessian_tol,
                    warmup_models=[m for m in models if m in args.warmup_models], warmup_steps=warmup_steps,
                    peak_steps=args.peak_steps, schedule_steps=SCHEDULE_EPOCHS * steps_per_epoch,
                    test_images=len(test) if test else 0, threads=torch.get_num_threads(),
                    **{**RECIPE, 'lr': args.lr, 'batch_size': args.batch_size}),
        measurements=[], warmups=[], bn_collapse=[],
    )
    if args.estimate:
        return results

    began = time.perf_counter()
    units = [(name, seed) for seed in args.seeds for name in models]
    for done, (name, seed) in enumerate(units):
        model = create(name, seed, spec.num_classes, RECIPE['drop_rate'])
        for i, head_init in enumerate(args.head_init):
            probe = with_head_init(model, head_init, seed)
            m = measure(probe, inputs, labels, args.hessian_iters if i == 0 else 0, args.hessian_tol, seed)
            results['measurements'].append(dict(model=name, seed=seed, head_init=head_init, when='init',
                                                head=head_stats(probe), **m))
        if name in args.warmup_models:
            after = {}
            record = warm_up(model, train, spec, seed, warmup_steps, args.peak_steps, args.lr, args.batch_size,
                             steps_per_epoch, lambda: after.update(measure_after(model, inputs, labels, test, spec,
                                                                                 args, seed)))
            top1 = after.pop('top1', {})
            if after:
                results['measurements'].append(dict(model=name, seed=seed, head_init=args.head_init[0],
                                                    when='warm-up', **after))
            results['warmups'].append(dict(model=name, seed=seed, **top1, **record))
        elapsed = time.perf_counter() - began
        left = elapsed / (done + 1) * (len(units) - done - 1)
        print(f'[{done + 1}/{len(units)}] {name} seed {seed}: {_brief(results, name, seed)} '
              f'({elapsed / 60:.1f} min, about {left / 60:.1f} min left)', flush=True)
    if args.hub_root.is_dir():
        results['bn_collapse'] = published_collapse(args.hub_root)
    results['seconds'] = time.perf_counter() - began
    return results


def measure_after(model, inputs, labels, test, spec, args, seed) -> dict:
    """`measure` after the warm-up, and test top-1 (with the global random stream left as it was)."""
    m = measure(model, inputs, labels, args.hessian_iters, args.hessian_tol, seed)
    if test is not None:
        with torch.random.fork_rng(devices=[]):
            m['top1'] = dict(test_top1=top1(model, test, spec, False),
                             test_top1_batch_stats=top1(model, test, spec, True))
    return m


def _brief(results: dict, name: str, seed: int) -> str:
    parts = []
    for m in results['measurements']:
        if m['model'] == name and m['seed'] == seed and 'hessian' in m:
            parts.append(f'{m["when"]}: grad {m["grad_norms"]["total"]:.3g}, '
                         f'{FIRST_BLOCKS} {m["grad_norms"][FIRST_BLOCKS]:.3g}, '
                         f'top eigenvalue {m["hessian"]["eigenvalue"]:.4g}')
    for w in results['warmups']:
        if w['model'] == name and w['seed'] == seed:
            late = w['max_loss_after']
            parts.append(f'{w["steps"]} steps, final loss {w["final_loss"]:.3f}'
                         + (f', max after step {BLOWUP_AFTER} {late:.3f}' if late is not None else '')
                         + (' (blew up)' if w['blew_up'] else ''))
    return '; '.join(parts)


# --- the page ----------------------------------------------------------------------------------------------------

def _short(name: str) -> str:
    return name.replace('mobilenetv3_small_', '')


def _mean_sd(values: Sequence[Optional[float]], fmt: str = '.3g', suffix: str = '') -> str:
    """'mean ± sd' of the finite values (a lone value as it is), saying how many were not finite."""
    values = [v for v in values if v is not None]
    finite = [v for v in values if math.isfinite(v)]
    note = f' ({len(values) - len(finite)} not finite)' if len(finite) < len(values) else ''
    if not finite:
        return 'n/a' + note
    if len(finite) == 1:
        return f'{finite[0]:{fmt}}{suffix}{note}'
    return f'{statistics.fmean(finite):{fmt}}{suffix} ± {statistics.stdev(finite):{fmt}}{note}'


def _seed_text(seeds: Sequence[int]) -> str:
    seeds = sorted(set(seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f'seeds {seeds[0]}-{seeds[-1]}'
    return ('seed ' if len(seeds) == 1 else 'seeds ') + ', '.join(map(str, seeds))


def _index(results: dict) -> dict:
    return {(m['model'], m['seed'], m['head_init'], m['when']): m for m in results['measurements']}


def ratios(results: dict, model: str, value: Callable[[dict], float], when: str = 'init') -> dict[int, float]:
    """value(model) / value(its DW partner) per seed measured for both (timm head init)."""
    index, partner = _index(results), MODELS[model].dw_partner
    head = results['config']['head_inits'][0]
    out = {}
    for seed in results['config']['seeds']:
        a, b = index.get((model, seed, head, when)), index.get((partner, seed, head, when))
        if a and b and value(b):
            out[seed] = value(a) / value(b)
    return out


def _grad_at(stage: str) -> Callable[[dict], float]:
    return lambda m: m['grad_norms'][stage]


def _eigenvalue(m: dict) -> Optional[float]:
    return m['hessian']['eigenvalue'] if 'hessian' in m else None


def verdict_gradient(results: dict) -> list[str]:
    """Hypothesis 1a: the gradient at FIRST_BLOCKS relative to DW, per claim."""
    lines = []
    for claim in GRADIENT_CLAIMS:
        measured = {m: ratios(results, m, _grad_at(FIRST_BLOCKS)) for m in claim.models}
        measured = {m: r for m, r in measured.items() if r}
        expected = f'{claim.low:g}x' if claim.low == claim.high else f'{claim.low:g}-{claim.high:g}x'
        if not measured:
            lines.append(f'- {claim.what}, about {expected}: **not measured** (none of its models ran).')
            continue
        fits = {m: claim.low / ABOUT <= statistics.fmean(r.values()) <= claim.high * ABOUT for m, r in measured.items()}
        verdict = 'confirmed' if all(fits.values()) else 'refuted' if not any(fits.values()) else 'partly confirmed'
        means = [statistics.fmean(r.values()) for r in measured.values()]
        seeds = sorted({s for r in measured.values() for s in r})
        detail = ', '.join(f'{_short(m)} {_mean_sd(list(r.values()), ".2f", "x")}' + ('' if fits[m] else ' (outside)')
                           for m, r in measured.items())
        lines.append(f'- {claim.what}, about {expected} DW\'s at `{FIRST_BLOCKS}`: **{verdict}**: mean ratio '
                     f'{statistics.fmean(means):.2f}x ({_seed_text(seeds)}; {detail}; accepted range '
                     f'{claim.low / ABOUT:.2f}-{claim.high * ABOUT:.2f}x).')
    claimed = {m for c in GRADIENT_CLAIMS for m in c.models}
    others = [m for m in results['config']['models'] if MODELS[m].dw_partner and m not in claimed]
    extra = [f'{_short(m)} vs {_short(MODELS[m].dw_partner)} {_mean_sd(list(r.values()), ".2f", "x")}'
             for m in others if (r := ratios(results, m, _grad_at(FIRST_BLOCKS)))]
    if extra:
        lines.append(f'- Not in the claim, measured alike: {"; ".join(extra)}.')
    return lines


def verdict_hessian(results: dict) -> list[str]:
    """Hypothesis 1b: the top Hessian eigenvalue at init about an order of magnitude above DW's."""
    low, high = ORDER_OF_MAGNITUDE
    claimed = [m for c in GRADIENT_CLAIMS for m in c.models]  # the variants of hypothesis 1, as for the gradient
    rows = {m: ratios(results, m, _eigenvalue) for m in claimed if m in results['config']['models']}
    rows = {m: r for m, r in rows.items() if r}
    others = [f'{_short(m)} vs {_short(MODELS[m].dw_partner)} {_mean_sd(list(r.values()), ".1f", "x")}'
              for m in results['config']['models'] if MODELS[m].dw_partner and m not in claimed
              if (r := ratios(results, m, _eigenvalue))]
    extra = [f'- Top Hessian eigenvalue, not in the claim, measured alike: {"; ".join(others)}.'] if others else []
    if not rows:
        return ['- Top Hessian eigenvalue at init about an order of magnitude above DW\'s: **not measured** (none of '
                'the models of the claim ran).', *extra]
    fits = {m: low <= statistics.fmean(r.values()) <= high for m, r in rows.items()}
    verdict = 'confirmed' if all(fits.values()) else 'refuted' if not any(fits.values()) else 'partly confirmed'
    worst = max((m['hessian']['last_change'] for m in results['measurements']
                 if 'hessian' in m and m['when'] == 'init'), default=math.nan)
    converged = (f'every estimate converged (last change at most {worst:.1e})' if worst <= CONVERGED else
                 f'**not every estimate converged** (last change up to {worst:.1e}, threshold {CONVERGED:g}): '
                 'rerun with more --hessian-iters')
    seeds = sorted({s for r in rows.values() for s in r})
    detail = ', '.join(f'{_short(m)} {_mean_sd(list(r.values()), ".1f", "x")}' + ('' if fits[m] else ' (outside)')
                       for m, r in rows.items())
    mean = statistics.fmean(statistics.fmean(r.values()) for r in rows.values())
    negative = [m for m in results['measurements'] if m['when'] == 'init'
                and -m.get('hessian', {}).get('smallest', 0.0) > m.get('hessian', {}).get('eigenvalue', math.inf)]
    signs = (f' For {len(negative)} estimates the eigenvalue of largest magnitude was negative (Lanczos finds the '
             'top one all the same).') if negative else ''
    return [f'- Top Hessian eigenvalue at init about an order of magnitude above DW\'s: **{verdict}**: mean ratio '
            f'{mean:.1f}x ({_seed_text(seeds)}; {detail}; accepted range {low:.1f}-{high:.1f}x); {converged}.{signs}',
            *extra]


def verdict_blowup(results: dict) -> list[str]:
    """Hypothesis 2: some seeds blow up early with the peak lr after the warm-up."""
    warmups, config = results['warmups'], results['config']
    if not warmups:
        return ['- **not measured** (no --warmup-models).']
    window = f'{config["warmup_steps"]} warm-up steps' + (f' + {config["peak_steps"]} at the peak lr'
                                                           if config['peak_steps'] else '')
    blown = [w for w in warmups if w['blew_up']]
    lines = []
    if blown:
        which = ', '.join(f'{_short(w["model"])} seed {w["seed"]} at step {w["blowup_step"]}' for w in blown)
        lines.append(f'- **confirmed**: {len(blown)} of {len(warmups)} runs blew up within {window} '
                     f'(loss above {BLOWUP_LOSS:.2f} after step {BLOWUP_AFTER}, or not finite): {which}.')
    elif all(w['steps'] <= BLOWUP_AFTER for w in warmups):
        lines.append(f'- **not measured**: no run went past step {BLOWUP_AFTER} ({window}), and none had a loss that '
                     'is not finite.')
    else:
        late = [w['max_loss_after'] for w in warmups
                if w['max_loss_after'] is not None and math.isfinite(w['max_loss_after'])]
        worst = (f'the highest loss after step {BLOWUP_AFTER} was {max(late):.2f}, threshold {BLOWUP_LOSS:.2f}'
                 if late else f'no run reached step {BLOWUP_AFTER}: only a loss that is not finite would count')
        lines.append(f'- **refuted within {window}**: none of {len(warmups)} runs blew up ({worst}).'
                     + ('' if config['peak_steps'] else ' Steps at the peak lr (epoch 2) were not run: '
                        '--peak-steps 390 covers them.'))
    top1 = [w for w in warmups if 'test_top1' in w]
    if top1:
        by_model = {}
        for w in top1:
            by_model.setdefault(w['model'], []).append(w)
        parts = [f'{_short(m)} {_mean_sd([w["test_top1"] for w in ws], ".1f", " %")} with running BN statistics, '
                 f'{_mean_sd([w["test_top1_batch_stats"] for w in ws], ".1f", " %")} with batch statistics'
                 for m, ws in by_model.items()]
        lines.append(f'- Test top-1 at the end ({config["test_images"]} test images): {"; ".join(parts)}.')
    return lines


def verdict_collapse(results: dict) -> list[str]:
    """Hypothesis 3: about 40 % of the BN scales collapsed in the long runs, none in the 20-epoch ones."""
    rows = results['bn_collapse']
    if not rows:
        return ['- **not measured** (no Hub folders).']
    long_runs = [r for r in rows if r['epochs'] is not None and r['epochs'] >= LONG_RUN_EPOCHS]
    short_runs = [r for r in rows if r['epochs'] is not None and r['epochs'] < LONG_RUN_EPOCHS]
    lines = []
    low, high = LONG_RUN_COLLAPSE
    if long_runs:
        fits = [low <= r['fraction'] <= high for r in long_runs]
        verdict = 'confirmed' if all(fits) else 'refuted' if not any(fits) else 'partly confirmed'
        detail = ', '.join(f'`{r["folder"]}` {100 * r["fraction"]:.1f} %' for r in long_runs)
        lines.append(f'- About 40 % collapsed (|gamma| < {COLLAPSED:g}) in the runs of {LONG_RUN_EPOCHS}+ epochs: '
                     f'**{verdict}**: {detail} (accepted {100 * low:.0f}-{100 * high:.0f} %).')
    else:
        lines.append(f'- About 40 % collapsed in the long runs: **not measured** (no folder of {LONG_RUN_EPOCHS}+ '
                     'epochs).')
    if short_runs:
        hit = [r for r in short_runs if r['collapsed']]
        detail = ', '.join(f'`{r["folder"]}` {r["collapsed"]} ({100 * r["fraction"]:.2f} %)' for r in hit)
        over = [r for r in short_runs if r['fraction'] >= SHORT_RUN_NONE]
        verdict = 'confirmed' if not over else 'refuted' if len(over) == len(short_runs) else 'partly confirmed'
        most = max(r['fraction'] for r in short_runs)
        folders = 'the folder' if len(short_runs) == 1 else f'the {len(short_runs)} folders'
        lines.append(f'- None (under {100 * SHORT_RUN_NONE:g} % of the scales of a folder) in {folders} '
                     f'of fewer than {LONG_RUN_EPOCHS} epochs: **{verdict}**: at most {100 * most:.2f} %'
                     + (f'; folders with any: {detail}.' if hit else ', not one collapsed scale.'))
    else:
        lines.append(f'- None in the shorter runs: **not measured** (no folder of fewer than {LONG_RUN_EPOCHS} '
                     'epochs).')
    unknown = [r['folder'] for r in rows if r['epochs'] is None]
    if unknown:
        lines.append(f'- Left out, their epochs not recorded ({RECORD_NAME}): {", ".join(unknown)}.')
    return lines


def verdict_head(results: dict) -> list[str]:
    """Hypothesis 4: timm's classifier init sends more gradient into the body than N(0, 0.001)."""
    index = _index(results)
    ratio = {}
    for (model, seed, head, when), m in index.items():
        other = index.get((model, seed, 'normal', 'init'))
        if head == 'timm' and when == 'init' and other and other['grad_norms']['body']:
            ratio[model, seed] = m['grad_norms']['body'] / other['grad_norms']['body']
    if not ratio:
        return ['- **not measured** (needs --head-init timm normal).']
    values = list(ratio.values())
    verdict = ('confirmed' if min(values) >= HEAD_MORE else 'refuted' if max(values) < HEAD_MORE
               else 'partly confirmed')
    heads = [m['head'] for m in results['measurements'] if m['when'] == 'init' and m['head_init'] == 'timm']
    init = (f' timm\'s classifier weights: max |w| {max(h["weight_max_abs"] for h in heads):.3f}, '
            f'1/sqrt(fan_out = {heads[0]["fan_out"]}) = {1 / math.sqrt(heads[0]["fan_out"]):.3f}, '
            f'1/sqrt(fan_in = {heads[0]["fan_in"]}) = {1 / math.sqrt(heads[0]["fan_in"]):.3f}.') if heads else ''
    seeds = sorted({s for _, s in ratio})
    return [f'- **{verdict}**: the body (all but the classifier) gets {statistics.fmean(values):.3g}x the gradient '
            f'norm with timm\'s init (min {min(values):.3g}x, max {max(values):.3g}x over {len(ratio)} model-seeds, '
            f'{_seed_text(seeds)}; threshold {HEAD_MORE:g}x for every one).{init}']


def _stage_names(results: dict) -> list[str]:
    for m in results['measurements']:
        return [k for k in m['grad_norms'] if k not in ('body', 'total')]
    return []


def render_page(results: dict, page_command: Optional[str] = None) -> str:
    """The markdown page of a run's results: tables and verdicts, all computed here from the numbers."""
    config, index = results['config'], _index(results)
    models, seeds, head = config['models'], config['seeds'], config['head_inits'][0]
    stages = _stage_names(results)
    lines = [
        '# Training dynamics of the MobileNetV3-Small XSepConv family',
        '',
        f'Measured with `{results["command"]}`' + (f', page written by `{page_command}`' if page_command else '') + '.',
        f'Machine: {results["machine"]}; ' + ', '.join(f'{k} {v}' for k, v in results['versions'].items()) +
        f'; {results.get("seconds", 0) / 60:.1f} min.',
        '',
        f'Every number is a mean ± sd over {_seed_text(seeds)} (the training seed: init, data order, crops and '
        f'dropout as `scripts/train.py` draws them). The batch is the first training batch of the seed '
        f'{config["batch_seed"]} run ({config["batch_size"]} {config["dataset"]} images, augmented), the same for '
        'every model; the model is in train mode with dropout '
        f'{config["drop_rate"]:g}. The Hessian is that of the cross-entropy on this batch w.r.t. all parameters '
        f'(no weight decay), its top eigenvalue found by Lanczos iteration on exact Hessian-vector products (at most '
        f'{config["hessian_iters"]} iterations, stopped once one moves the estimate by less than '
        f'{config["hessian_tol"]:g}).',
        '',
        '## Hypotheses',
        '',
        '**1. At init the gradient reaching the first blocks is about 2.6-2.8x DW\'s for XSepConv variants with '
        'three convs in series, about 1.5x for XSepConv-P and no-2x2; the top Hessian eigenvalue about an order of '
        'magnitude higher.**',
        '',
        *verdict_gradient(results),
        *verdict_hessian(results),
        '',
        f'**2. Some seeds blow up early with lr {config["lr"]:g} after a one-epoch warm-up.**',
        '',
        *verdict_blowup(results),
        '',
        '**3. In the 400-epoch runs about 40 % of the BatchNorm scales collapsed to ~0; the 20-epoch runs have none.**',
        '',
        *verdict_collapse(results),
        '',
        '**4. timm\'s classifier init sends more gradient into the body at step 0 than the first author\'s '
        f'N(0, {NORMAL_HEAD_STD:g}).**',
        '',
        *verdict_head(results),
        '',
        '## Gradient norm per stage at init, relative to the DW partner',
        '',
        f'XSepConv model / its DW partner at the same seed ({head} classifier init).',
        '',
        '| model | partner | ' + ' | '.join(stages) + ' | body | total |',
        '|---|---|' + '---:|' * (len(stages) + 2),
    ]
    for m in models:
        if MODELS[m].dw_partner:
            cells = [_mean_sd(list(ratios(results, m, _grad_at(s)).values()), '.2f', 'x')
                     for s in [*stages, 'body', 'total']]
            lines.append(f'| {_short(m)} | {_short(MODELS[m].dw_partner)} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## Gradient norm per stage at init', '',
              '| model | classifier init | loss | ' + ' | '.join(stages) + ' | body | total |',
              '|---|---|---:|' + '---:|' * (len(stages) + 2)]
    for m in models:
        for h in config['head_inits']:
            runs = [index[m, s, h, 'init'] for s in seeds if (m, s, h, 'init') in index]
            if runs:
                cells = [_mean_sd([r['grad_norms'][s] for r in runs]) for s in [*stages, 'body', 'total']]
                lines.append(f'| {_short(m)} | {h} | {_mean_sd([r["loss"] for r in runs], ".3f")} | '
                             + ' | '.join(cells) + ' |')
    lines += ['', '## Top Hessian eigenvalue at init', '',
              '| model | top eigenvalue | / DW partner | iterations | largest last change |',
              '|---|---:|---:|---:|---:|']
    for m in models:
        runs = [index[m, s, head, 'init'] for s in seeds if (m, s, head, 'init') in index]
        runs = [r for r in runs if 'hessian' in r]
        if runs:
            ratio = _mean_sd(list(ratios(results, m, _eigenvalue).values()), '.1f', 'x') if MODELS[m].dw_partner else ''
            lines.append(f'| {_short(m)} | {_mean_sd([r["hessian"]["eigenvalue"] for r in runs], ".4g")} | {ratio} | '
                         f'{max(r["hessian"]["iterations"] for r in runs)} | '
                         f'{max(r["hessian"]["last_change"] for r in runs):.1e} |')
    if results['warmups']:
        lines += ['', '## After the warm-up', '',
                  f'{config["warmup_steps"]} steps of SGD (momentum {config["momentum"]:g}, weight decay '
                  f'{config["weight_decay"]:g}, batch {config["batch_size"]}), the lr rising linearly to '
                  f'{config["lr"]:g}'
                  + (f', then {config["peak_steps"]} steps on the cosine of a {config["schedule_steps"]}-step run'
                     if config['peak_steps'] else '') +
                  f'. Blown up: a loss above {BLOWUP_LOSS:.2f} after step {BLOWUP_AFTER}, or not finite. Final loss: '
                  'mean of the last 10 steps.', '',
                  '| model | first loss | max loss after step 50 | loss at the end of the warm-up | final loss | '
                  'blew up | test top-1, running BN (%) | test top-1, batch BN (%) |',
                  '|---|---:|---:|---:|---:|---|---:|---:|']
        for m in models:
            ws = [w for w in results['warmups'] if w['model'] == m]
            if ws:
                blown = [str(w['seed']) for w in ws if w['blew_up']]
                lines.append(
                    f'| {_short(m)} | {_mean_sd([w["first_loss"] for w in ws], ".3f")} | '
                    f'{_mean_sd([w["max_loss_after"] for w in ws], ".3f")} | '
                    f'{_mean_sd([w["warmup_final_loss"] for w in ws], ".3f")} | '
                    f'{_mean_sd([w["final_loss"] for w in ws], ".3f")} | '
                    + (f'seeds {", ".join(blown)}' if blown else 'no') + ' | '
                    f'{_mean_sd([w.get("test_top1") for w in ws], ".1f")} | '
                    f'{_mean_sd([w.get("test_top1_batch_stats") for w in ws], ".1f")} |')
        lines += ['', '| model | loss | ' + ' | '.join(stages) + ' | total | top eigenvalue | / DW partner |',
                  '|---|---:|' + '---:|' * (len(stages) + 3)]
        for m in models:
            runs = [index[m, s, head, 'warm-up'] for s in seeds if (m, s, head, 'warm-up') in index]
            if runs:
                ratio = (_mean_sd(list(ratios(results, m, _eigenvalue, 'warm-up').values()), '.1f', 'x')
                         if MODELS[m].dw_partner else '')
                cells = [_mean_sd([r['grad_norms'][s] for r in runs]) for s in [*stages, 'total']]
                lines.append(f'| {_short(m)} | {_mean_sd([r["loss"] for r in runs], ".3f")} | ' + ' | '.join(cells)
                             + f' | {_mean_sd([r["hessian"]["eigenvalue"] for r in runs], ".4g")} | {ratio} |')
    if results['bn_collapse']:
        lines += ['', '## Collapsed BatchNorm scales in the published weights', '',
                  f'BatchNorm weights with |gamma| < {COLLAPSED:g}, from each Hub folder\'s model.safetensors'
                  + (f'; counted again with `{results["bn_collapse_command"]}`.' if results.get('bn_collapse_command')
                     else '.'), '',
                  '| Hub folder | epochs | seed | BN scales | collapsed | fraction | layers with every scale collapsed '
                  f'| layers with {100 * MOSTLY:g} % or more collapsed |',
                  '|---|---:|---:|---:|---:|---:|---|---|']
        for r in results['bn_collapse']:
            every = ', '.join(f'`{name}`' for name in r['layers_all_collapsed']) or '-'
            mostly = ', '.join(f'`{name}` {100 * f:.0f} %' for name, f in r['layers_mostly_collapsed'].items()) or '-'
            lines.append(f'| `{r["folder"]}` | {r["epochs"]} | {r["seed"]} | {r["bn_scales"]} | {r["collapsed"]} | '
                         f'{100 * r["fraction"]:.2f} % | {every} | {mostly} |')
    return '\n'.join(lines) + '\n'


def _data_as_placeholder(argv: Sequence[str]) -> list[str]:
    """The command line with the local dataset folder shown as /path/to/cifar10: a page names no folder of one
    machine."""
    shown = list(argv)
    for i, arg in enumerate(shown):
        if arg == '--data-source' and i + 1 < len(shown):
            shown[i + 1] = '/path/to/cifar10'
        elif arg.startswith('--data-source='):
            shown[i] = '--data-source=/path/to/cifar10'
    return shown


def save_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + '\n')


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command = shlex.join(['python', 'scripts/diagnose.py', *_data_as_placeholder(argv)])
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        if args.recount_bn:
            try:
                results['bn_collapse'] = published_collapse(args.hub_root)
            except WeightsError as e:
                sys.exit(str(e))
            results['bn_collapse_command'] = args.command
            if args.output:
                save_results(results, args.output)
        if args.docs:
            args.docs.parent.mkdir(parents=True, exist_ok=True)
            args.docs.write_text(render_page(results, page_command=args.command))
        return results
    flush_subnormals()  # first, before the thread pool starts (see xsep_zoo.engine.flush_subnormals)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = run(args)
    except WeightsError as e:
        sys.exit(str(e))
    if args.output:
        save_results(results, args.output)
    if args.docs and not args.estimate:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(render_page(results))
    return results


if __name__ == '__main__':
    main()
