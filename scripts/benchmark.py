"""How fast the zoo's models run: eval throughput, batch-1 latency, training steps, and per layer.

    python scripts/benchmark.py --device cpu --threads 2 --readme README.md   # the README's CPU tables
    python scripts/benchmark.py --device cuda --precision fp32 bf16 --json benchmark-cuda.json
    python scripts/benchmark.py --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 --input-size 64
    python scripts/benchmark.py --from-json benchmark-cuda.json --readme README.md  # tables of a saved run

All models are measured interleaved in one process, round by round (every model once, then
again, starting one model later each round), so a slow moment of a noisy machine falls on all of
them and their ratios hold. A figure is the median over rounds with its min-max; batch-1 latency
is the median of single calls with their 10-90 % range. Forms: 'plain' is the model as trained
(eval mode), 'fused' is `timm.utils.reparameterize_model(model)`, 'compiled' is torch.compile of
the fused model (inductor, with freezing). DW models have nothing to fuse: their fused form is the
plain one and is not measured twice. Inputs are random normal images; weights are random, with
BatchNorm statistics calibrated on such inputs.
"""
import argparse
import copy
import json
import os
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

import xsep_zoo  # noqa: F401  registers the models
from readme_section import check_section, print_and_write
from xsep_zoo import MODELS, XSepConv, count_cost
from xsep_zoo.engine import describe_machine

# timm's own model, then the paper's model and the kernel-size experiments, each after its DW partner
TIMED = ('mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_k7_100', 'mobilenetv3_small_xsep_ds7_100')
DEFAULT_MODELS = ('timm:mobilenetv3_small_100', *(name for xsep in TIMED for name in (MODELS[xsep].dw_partner, xsep)))
FORMS = ('plain', 'fused', 'compiled')
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                   help="zoo or timm model names; 'timm:<name>' is timm's own model with the zoo's small-input "
                        'strides (stem and first block at stride 1)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cpu or cuda')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='CPU threads (default: all cores)')
    p.add_argument('--precision', nargs='+', default=['fp32'], choices=sorted(PRECISIONS),
                   help='fp32, or autocast to bf16 / fp16')
    p.add_argument('--forms', nargs='+', default=['plain', 'fused'], choices=FORMS)
    p.add_argument('--input-size', type=int, default=32, help='square input side (default 32)')
    p.add_argument('--eval-batch', type=int, default=256)
    p.add_argument('--train-batch', type=int, default=128, help='0 skips the training measurement')
    p.add_argument('--rounds', type=int, default=10, help='measured rounds (after --warmup-rounds)')
    p.add_argument('--warmup-rounds', type=int, default=2)
    p.add_argument('--eval-iters', type=int, default=3, help='batches timed together per round')
    p.add_argument('--train-iters', type=int, default=2, help='steps timed together per round')
    p.add_argument('--latency-calls', type=int, default=30, help='batch-1 calls per round, each timed')
    p.add_argument('--layer-batches', nargs='*', type=int, default=[256, 1],
                   help='batch sizes of the per-layer comparison (none: skip it)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=True)
    p.add_argument('--json', type=Path, help='write all measurements here')
    p.add_argument('--readme', type=Path, help='rewrite a section of this file (see --section)')
    p.add_argument('--section', help='README section to rewrite (default: benchmark-<device type>)')
    p.add_argument('--from-json', type=Path, help='measure nothing: print (and --readme) the tables of a saved --json')
    return p.parse_args(argv)


# ---------------------------------------------------------------- models

def build_model(name: str, input_size: int) -> nn.Module:
    """A model with random weights and BatchNorm statistics calibrated on random images, in eval mode."""
    if name.startswith('timm:'):
        model = timm.create_model(name.removeprefix('timm:'), num_classes=10)
        model.conv_stem.stride = (1, 1)  # the zoo's small-input strides: total stride 8
        model.blocks[0][0].conv_dw.stride = (1, 1)
    else:
        model = timm.create_model(name, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.train()
        for _ in range(4):
            model(torch.randn(32, 3, input_size, input_size, generator=generator))
    return model.eval()


def dw_partner(name: str):
    """The DW baseline an XSepConv model is compared with, from the family table; None for any other model."""
    return MODELS[name].dw_partner if name in MODELS else None


def has_xsepconv(model: nn.Module) -> bool:
    return any(isinstance(m, XSepConv) for m in model.modules())


def make_form(model: nn.Module, form: str) -> nn.Module:
    if form == 'plain':
        return model
    fused = reparameterize_model(model)  # a copy
    if form == 'compiled':
        torch._inductor.config.freezing = True  # weights as constants: inductor folds and prepacks them
        return torch.compile(fused, dynamic=False)  # one graph per input shape
    return fused


# ---------------------------------------------------------------- timing

class Timer:
    """Wall-clock seconds of a region, with the device synchronized at both ends."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def __call__(self, fn, iters: int = 1) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        self.sync()
        return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def nearest_rank(q: float) -> float:
        return ordered[round(q * (len(ordered) - 1))]

    return dict(median=statistics.median(ordered), p10=nearest_rank(0.1), p90=nearest_rank(0.9), n=len(ordered))


class Measurement:
    """One thing timed each round; keeps the samples of the measured rounds."""

    def __init__(self, run):
        self.run, self.samples = run, []

    def round(self, record: bool) -> None:
        values = self.run()
        if record:
            self.samples.extend(values if isinstance(values, list) else [values])


def run_rounds(measurements: list[Measurement], rounds: int, warmup: int) -> None:
    for r in range(warmup + rounds):
        shift = r % len(measurements)
        for m in measurements[shift:] + measurements[:shift]:
            m.round(record=r >= warmup)


def eval_measurement(model, images, timer, iters, autocast):
    def run():
        with torch.inference_mode(), autocast():
            return images.shape[0] * iters / timer(lambda: model(images), iters)  # images/s
    return run


def latency_measurement(model, image, timer, calls, autocast):
    def run():
        with torch.inference_mode(), autocast():
            return [1e3 * timer(lambda: model(image)) for _ in range(calls)]  # ms per call
    return run


def train_measurement(model, images, labels, timer, iters, autocast):
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # small: stays finite on noise

    def step():
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return lambda: images.shape[0] * iters / timer(step, iters)  # images/s


# ---------------------------------------------------------------- layers

def xsep_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, XSepConv, tuple]]:
    """(name, module, input shape C x H x W) of every XSepConv, as the network feeds it."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape[1:])))
             for n, m in model.named_modules() if isinstance(m, XSepConv)]
    with torch.no_grad():
        model(image)
    for h in hooks:
        h.remove()
    return [(n, model.get_submodule(n), shapes[n]) for n in shapes]


# ---------------------------------------------------------------- report

def fmt(s: dict, digits: int = 0) -> str:
    lo, hi = (s['min'], s['max']) if 'min' in s else (s['p10'], s['p90'])
    return f'{s["median"]:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})'


def _table(caption: str, header: list[str], rows: list[list[str]], text_columns: int = 2) -> list[str]:
    """A markdown table under its caption: text columns first, then right-aligned numbers."""
    align = ['---'] * text_columns + ['---:'] * (len(header) - text_columns)
    lines = [caption, ''] if caption else []
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|']
    return lines + ['| ' + ' | '.join(row) + ' |' for row in rows] + ['']


def markdown(result: dict) -> str:
    a = result['settings']
    lines = [
        f'Measured on {result["machine"]}, {a["input_size"]}x{a["input_size"]} inputs, '
        f'{"channels_last" if a["channels_last"] else "NCHW"}, {a["rounds"]} interleaved rounds, by '
        f'`{a["command"]}`. Throughput: median (min-max over rounds); times: median (10-90 % of the calls).',
        '',
    ]
    for precision in a['precision']:
        columns = 6 if a['train_batch'] else 5  # without a training measurement, no column for it
        lines += [f'**{precision}**', '']
        lines += _table('', [
            'model', 'form', 'MACs (M)', f'eval b{a["eval_batch"]} (img/s)', 'latency b1 (ms)',
            f'train b{a["train_batch"]} (img/s)',
        ][:columns], [
            [f'`{r["model"]}`', r['form'], f'{r["macs"] / 1e6:.2f}', fmt(r['eval']), fmt(r['latency_ms'], 2),
             fmt(r['train']) if r.get('train') else '-'][:columns]
            for r in result['models'] if r['precision'] == precision
        ])
        pairs = [p for p in result['pairs'] if p['precision'] == precision]
        if pairs:
            lines += _table(
                'XSepConv / DW ratios: MACs (the ideal) beside time (median eval time per image, batch-1 '
                'latency, training time per image); below 1 means XSepConv is faster.',
                ['XSepConv model', 'form', 'MAC ratio', 'eval time ratio', 'latency ratio', 'train time ratio'],
                [[f'`{p["model"]}`', p['form'], f'{p["mac_ratio"]:.2f}', f'{p["eval_ratio"]:.2f}',
                  f'{p["latency_ratio"]:.2f}', f'{p["train_ratio"]:.2f}' if p.get('train_ratio') else '-']
                 for p in pairs])
        layers = [r for r in result['layers'] if r['precision'] == precision]
        if layers:
            lines += _table(
                'Per layer: each XSepConv against the depthwise conv it replaces (same slot of the DW '
                'partner), eval forward in ms; ratio = fused XSepConv / DW.',
                ['model', 'layer', 'input', 'k, stride', 'batch', 'DW (ms)', 'XSepConv (ms)', 'fused (ms)',
                 'time ratio', 'MAC ratio'],
                [[f'`{r["model"]}`', r['layer'], 'x'.join(map(str, r['input'])), f'{r["kernel"]}, {r["stride"]}',
                  str(r['batch']), fmt(r['dw_ms'], 3), fmt(r['plain_ms'], 3), fmt(r['fused_ms'], 3),
                  f'{r["fused_ms"]["median"] / r["dw_ms"]["median"]:.2f}', f'{r["mac_ratio"]:.2f}']
                 for r in layers], text_columns=3)
    return '\n'.join(lines)


# ---------------------------------------------------------------- main

def model_rows(built: dict, costs: dict, args, inputs: dict, labels, timer, autocast, precision: str) -> list[dict]:
    """A row per model and form, its measurements (under '_m') not yet run."""
    rows = []
    for name, base in built.items():
        for form in args.forms:
            if form == 'fused' and not has_xsepconv(base):
                continue  # nothing to fold: the plain form is the fused one
            model = make_form(base, form)
            row = dict(model=name, form=form, precision=precision, macs=costs[name].macs, params=costs[name].params)
            row['_m'] = dict(
                eval=Measurement(eval_measurement(model, inputs[args.eval_batch], timer, args.eval_iters, autocast)),
                latency_ms=Measurement(latency_measurement(model, inputs[1], timer, args.latency_calls, autocast)),
            )
            if form == 'plain' and args.train_batch:
                row['_m']['train'] = Measurement(
                    train_measurement(base, inputs[args.train_batch], labels, timer, args.train_iters, autocast))
            rows.append(row)
    return rows


def layer_rows(name: str, model: nn.Module, partner: nn.Module, args, inputs: dict, generator, timer, autocast,
               precision: str) -> list[dict]:
    """A row per XSepConv of `model` and batch size: it, its fused form and the DW conv in the partner's slot."""
    rows = []
    device, memory_format = inputs[1].device, _memory_format(args)
    for layer_name, layer, shape in xsep_layers(model, inputs[1]):
        dw = partner.get_submodule(layer_name)
        fused = copy.deepcopy(layer).eval()
        fused.reparameterize()
        mac_ratio = count_cost(layer, shape).macs / count_cost(dw, shape).macs
        for batch in args.layer_batches:
            x = torch.randn(batch, *shape, generator=generator).to(device, memory_format=memory_format)
            calls = 1 if batch > 1 else args.latency_calls
            rows.append(dict(
                model=name, layer=layer_name, input=shape, kernel=layer.kernel_size, stride=layer.stride, batch=batch,
                precision=precision, mac_ratio=mac_ratio,
                _m={key: Measurement(latency_measurement(module, x, timer, calls, autocast))
                    for key, module in (('dw_ms', dw), ('plain_ms', layer), ('fused_ms', fused))},
            ))
    return rows


def pair_ratios(rows: list[dict]) -> list[dict]:
    """XSepConv / DW ratios for every XSepConv row whose DW partner was measured in the same form."""
    def find(model, precision, form):
        return next((r for r in rows if (r['model'], r['precision'], r['form']) == (model, precision, form)), None)

    pairs = []
    for row in rows:
        partner, precision = dw_partner(row['model']), row['precision']
        dw = find(partner, precision, row['form'])
        if dw is None and row['form'] == 'fused':
            dw = find(partner, precision, 'plain')  # a DW model's fused form is its plain one
        if dw is None:
            continue
        plain = find(row['model'], precision, 'plain') or {}
        pairs.append(dict(
            model=row['model'], dw=dw['model'], form=row['form'], precision=precision,
            mac_ratio=row['macs'] / dw['macs'],
            eval_ratio=dw['eval']['median'] / row['eval']['median'],  # time per image, so inverse throughput
            latency_ratio=row['latency_ms']['median'] / dw['latency_ms']['median'],
            train_ratio=dw['train']['median'] / plain['train']['median'] if dw.get('train') and plain.get('train')
            else None,
        ))
    return pairs


def _memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def benchmark(args: argparse.Namespace, command: str) -> dict:
    device = torch.device(args.device)
    if device.type == 'cpu':
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    memory_format = _memory_format(args)
    timer = Timer(device)
    generator = torch.Generator().manual_seed(1)
    size = args.input_size
    inputs = {b: torch.randn(b, 3, size, size, generator=generator).to(device, memory_format=memory_format)
              for b in {args.eval_batch, 1, args.train_batch or 1}}
    labels = torch.randint(0, 10, (args.train_batch or 1,), generator=generator).to(device)

    built = {name: build_model(name, size) for name in args.models}
    costs = {name: count_cost(model, (3, size, size)) for name, model in built.items()}
    for model in built.values():
        model.to(device, memory_format=memory_format)
    rows, layers = [], []
    for precision in args.precision:
        dtype = PRECISIONS[precision]
        autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        rows += model_rows(built, costs, args, inputs, labels, timer, autocast, precision)
        if args.layer_batches:
            for name, model in built.items():
                partner = built.get(dw_partner(name))
                if partner is not None:
                    layers += layer_rows(name, model, partner, args, inputs, generator, timer, autocast, precision)

    run_rounds([m for row in rows + layers for m in row['_m'].values()], args.rounds, args.warmup_rounds)
    for row in rows + layers:
        for key, m in row.pop('_m').items():
            row[key] = summary(m.samples) if key in ('eval', 'train') else percentiles(m.samples)

    settings = {k: v for k, v in vars(args).items() if k not in ('json', 'readme', 'section', 'from_json')}
    settings['command'] = command
    return dict(machine=describe_machine(), settings=json.loads(json.dumps(settings, default=str)),
                models=rows, pairs=pair_ratios(rows), layers=layers)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        device = torch.device(result['settings']['device'])
        print_and_write(markdown(result), args.readme, args.section or f'benchmark-{device.type}')
        return result
    command = 'python ' + shlex.join(['scripts/benchmark.py', *(sys.argv[1:] if argv is None else argv)])
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit(f'--device {args.device}: CUDA is not available here; allowed: cpu')
    section = args.section or f'benchmark-{torch.device(args.device).type}'
    check_section(args.readme, section)
    result = benchmark(args, command)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + '\n')
    print_and_write(markdown(result), args.readme, section)
    return result


if __name__ == '__main__':
    main()
