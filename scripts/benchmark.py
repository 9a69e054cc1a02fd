"""How fast the zoo's models run: eval throughput, batch-1 latency, training steps, and per layer.

    python scripts/benchmark.py --device cpu --threads 2 --readme README.md   # the README's CPU tables
    python scripts/benchmark.py --device cuda --precision fp32 bf16 --json benchmark-cuda.json
    python scripts/benchmark.py --models mobilenetv3_small_dw_100 mobilenetv3_small_xsep_100 --input-size 64
    python scripts/benchmark.py --from-json benchmark-cuda.json --readme README.md  # tables of a saved run

All models are measured interleaved in one process, round by round (every model once, then
again, starting one model later each round), so a slow moment of a noisy machine falls on all of
them and their ratios hold. A figure is the median over rounds with its min-max; batch-1 latency
is the median of single calls with their 10-90 % range. Forms: 'plain' is the model as trained
(eval mode); 'folded' is `timm.utils.reparameterize_model(model)` with the XSepConvs as three
depthwise convs (BatchNorms folded); 'fused' is `reparameterize_model(model)` as it comes, each
XSepConv with its block's BatchNorm + activation one op (xsep_zoo/fused.py) where that op runs;
'compiled' is torch.compile of the fused model (inductor, with freezing, which folds the DW models'
BatchNorms too), 'compiled-folded' that of the folded one (inductor left to fuse the three convs).
DW models have nothing to fold or fuse in eager mode: those forms are their plain one and are not
measured twice. Each XSepConv model is also compared in its fastest form against its
DW partner in the partner's fastest form. Per layer, each XSepConv with the block's BatchNorm +
activation after it is timed against the depthwise conv + BatchNorm + activation in the same slot of
the DW partner, beside the time the machine's measured memory bandwidth and arithmetic peak allow.
Inputs are random normal images; weights are random, with BatchNorm statistics calibrated on such
inputs.
"""
import argparse
import copy
import json
import math
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
from xsep_zoo import MODELS, XSepConv, count_cost, set_fused_op
from xsep_zoo.fused import op_available
from xsep_zoo.engine import describe_machine

# timm's own model, then the paper's model and the kernel-size experiments, each after its DW partner
TIMED = ('mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_k7_100', 'mobilenetv3_small_xsep_ds7_100')
DEFAULT_MODELS = ('timm:mobilenetv3_small_100', *(name for xsep in TIMED for name in (MODELS[xsep].dw_partner, xsep)))
FORMS = ('plain', 'folded', 'fused', 'compiled', 'compiled-folded')
SUMMARY_SECTION = 'speed-summary'
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
    p.add_argument('--forms', nargs='+', default=['plain', 'folded', 'fused'], choices=FORMS)
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
    p.add_argument('--summary', type=Path,
                   help=f'also rewrite the {SUMMARY_SECTION} section of this file: the fastest forms compared')
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
    if form in ('folded', 'compiled-folded'):
        set_fused_op(fused, False)
    if form.startswith('compiled'):
        torch._inductor.config.freezing = True  # weights as constants: inductor folds and prepacks them
        # every model shares timm's forward, compiled once per model and input shape: dynamo's default limit of
        # recompilations of one function would leave the later models running eagerly, unnoticed
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
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


# ---------------------------------------------------------------- the machine's limits

def machine_limits(device: torch.device, timer: 'Timer', repeats: int = 5) -> dict:
    """What this device can do at best, measured: memory bandwidth (bytes/s) and fp32 multiply-adds per second.

    Bandwidth is that of copying a 256 MiB tensor (read once, written once), far larger than any cache;
    arithmetic is a 2048^3 fp32 matmul, the kind of work that reaches a CPU's vector units' peak. A layer's
    limit is the longer of moving its input and output once and doing its multiply-adds at that peak.
    """
    source = torch.ones(64 << 20, device=device)
    target = torch.empty_like(source)
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    copy_s = min(timer(lambda: target.copy_(source)) for _ in range(repeats))
    matmul_s = min(timer(lambda: torch.mm(a, b)) for _ in range(repeats))
    return dict(bytes_per_s=2 * source.numel() * source.element_size() / copy_s, macs_per_s=2048 ** 3 / matmul_s)


def layer_limit_ms(input_shape: tuple, output_shape: tuple, macs_per_image: int, batch: int, limits: dict) -> dict:
    """The fastest a layer could be on this device: its input read and output written once (fp32), or its
    multiply-adds at the device's peak, whichever takes longer; ms per call."""
    elements = batch * (math.prod(input_shape) + math.prod(output_shape))
    memory_ms = 1e3 * 4 * elements / limits['bytes_per_s']
    arithmetic_ms = 1e3 * batch * macs_per_image / limits['macs_per_s']
    return dict(memory_ms=memory_ms, arithmetic_ms=arithmetic_ms, bound='memory' if memory_ms >= arithmetic_ms
                else 'arithmetic')


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


def _header(result: dict) -> str:
    a, limits = result['settings'], result.get('limits')
    line = (f'Measured on {result["machine"]}, {a["input_size"]}x{a["input_size"]} inputs, '
            f'{"channels_last" if a["channels_last"] else "NCHW"}, {a["rounds"]} interleaved rounds, by '
            f'`{a["command"]}`.')
    if limits:
        line += (f' This machine moves {limits["bytes_per_s"] / 1e9:.1f} GB/s (a large copy) and does '
                 f'{limits["macs_per_s"] / 1e9:.0f} G multiply-adds/s (a large fp32 matmul).')
    if 'fused_op' in result and not result['fused_op']:
        line += ' The fused XSepConv op could not be built here: the fused forms ran the plain convs.'
    return line


def fastest_table(result: dict, precision: str) -> list[str]:
    pairs = [p for p in result.get('fastest', []) if p['precision'] == precision]
    if not pairs:
        return []
    return _table(
        'Each XSepConv model in its fastest form against its DW partner in the partner\'s fastest form '
        '(form: XSepConv / DW); time ratios below 1 mean XSepConv is faster.',
        ['XSepConv model', 'DW partner', 'MAC ratio', f'eval b{result["settings"]["eval_batch"]} time ratio',
         'forms', 'latency b1 ratio', 'forms'],
        [[f'`{p["model"]}`', f'`{p["dw"]}`', f'{p["mac_ratio"]:.2f}', f'{p["eval_ratio"]:.2f}',
          ' / '.join(p['eval_forms']), f'{p["latency_ratio"]:.2f}', ' / '.join(p['latency_forms'])] for p in pairs])


def goal_lines(result: dict, precision: str) -> list[str]:
    """Whether XSepConv's saved multiply-adds show on the clock here: each fused layer at most as slow as the DW
    conv + BN + activation it replaces, each model in its fastest form at least as fast as its DW partner in its."""
    layers = [r for r in result['layers'] if r['precision'] == precision and 'folded_ms' in r]
    pairs = [p for p in result.get('fastest', []) if p['precision'] == precision]
    if not layers and not pairs:
        return []
    lines = ['Goal: every fused XSepConv layer at most as slow as the depthwise conv + BatchNorm + activation it '
             'replaces, and every XSepConv model in its fastest form at least as fast as its DW partner in its '
             'fastest form (eval and batch-1 latency):', '']
    for model in dict.fromkeys(r['model'] for r in layers):
        for batch in dict.fromkeys(r['batch'] for r in layers if r['model'] == model):
            rows = [r for r in layers if (r['model'], r['batch']) == (model, batch)]
            slow = [r for r in rows if r['fused_ms']['median'] > r['dw_ms']['median']]
            text = 'met' if not slow else f'not met by {len(slow)} of {len(rows)}: ' + ', '.join(
                f'{r["layer"]} takes {r["fused_ms"]["median"] / r["dw_ms"]["median"] - 1:.0%} longer '
                f'({_of_limit(r["fused_ms"], r["xsep_limit"])} its limit, DW {_of_limit(r["dw_ms"], r["dw_limit"])})'
                for r in slow)
            what = f'its {len(rows)} layers' if len(rows) > 1 else 'its layer'
            lines.append(f'- `{model}`, {what} at batch {batch}: {text}.')
    for p in pairs:
        for what, ratio, forms in (('eval', p['eval_ratio'], p['eval_forms']),
                                   ('latency', p['latency_ratio'], p['latency_forms'])):
            verdict = 'met' if ratio <= 1 else f'not met: XSepConv takes {ratio - 1:.0%} longer'
            lines.append(f'- `{p["model"]}` against `{p["dw"]}`, {what} ({" / ".join(forms)}): {verdict}.')
    lines += ['', 'The per-layer times are of eager forms; compiled, inductor also folds the DW partner\'s BatchNorm '
              'and activation into its conv and fuses around it, while the XSepConv op stays one opaque call, so a '
              'model can stay behind although each of its fused layers is ahead.', '']
    return lines


def _of_limit(ms: dict, limit: dict) -> str:
    return f'{ms["median"] / max(limit["memory_ms"], limit["arithmetic_ms"]):.1f}x'


def markdown(result: dict) -> str:
    a = result['settings']
    lines = [_header(result) + ' Throughput: median (min-max over rounds); times: median (10-90 % of the calls).', '']
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
        lines += fastest_table(result, precision)
        lines += goal_lines(result, precision)
        pairs = [p for p in result['pairs'] if p['precision'] == precision]
        if pairs:
            lines += _table(
                'Form by form: XSepConv / DW ratios of MACs (the ideal) and time (eval time per image, batch-1 '
                'latency, training time per image); the DW partner has no folded or fused form and is its plain self '
                'there.',
                ['XSepConv model', 'form', 'MAC ratio', 'eval time ratio', 'latency ratio', 'train time ratio'],
                [[f'`{p["model"]}`', p['form'], f'{p["mac_ratio"]:.2f}', f'{p["eval_ratio"]:.2f}',
                  f'{p["latency_ratio"]:.2f}', f'{p["train_ratio"]:.2f}' if p.get('train_ratio') else '-']
                 for p in pairs])
        layers = [r for r in result['layers'] if r['precision'] == precision]
        if layers and 'folded_ms' in layers[0]:
            lines += _table(
                'Per layer: each XSepConv followed by its block\'s BatchNorm + activation against the depthwise conv + '
                'BatchNorm + activation in the same slot of the DW partner, eval forward in ms: as trained (plain), '
                'folded into three convs, and fused into one op; time ratio = fused / DW. The limit is the longer of '
                'reading the input and writing the output once at the measured bandwidth and doing the layer\'s '
                'multiply-adds at the measured peak; "of limit" says how many times that each one takes.',
                ['model', 'layer', 'input', 'k, stride', 'batch', 'DW (ms)', 'plain (ms)', 'folded (ms)', 'fused (ms)',
                 'time ratio', 'MAC ratio', 'limit (ms), bound', 'fused of limit', 'DW of limit'],
                [[f'`{r["model"]}`', r['layer'], 'x'.join(map(str, r['input'])), f'{r["kernel"]}, {r["stride"]}',
                  str(r['batch']), fmt(r['dw_ms'], 3), fmt(r['plain_ms'], 3), fmt(r['folded_ms'], 3),
                  fmt(r['fused_ms'], 3), f'{r["fused_ms"]["median"] / r["dw_ms"]["median"]:.2f}',
                  f'{r["mac_ratio"]:.2f}',
                  f'{max(r["xsep_limit"]["memory_ms"], r["xsep_limit"]["arithmetic_ms"]):.3f}, '
                  f'{r["xsep_limit"]["bound"]}', _of_limit(r['fused_ms'], r['xsep_limit']),
                  _of_limit(r['dw_ms'], r['dw_limit'])]
                 for r in layers], text_columns=3)
        elif layers:  # a saved run from before the forms of a layer were told apart
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


def readme_summary(result: dict) -> str:
    """The README's speed summary: the fastest-form comparison of each pair, in fp32."""
    lines = [_header(result), ''] + fastest_table(result, 'fp32') + goal_lines(result, 'fp32')
    lines.append('Per model and per layer, with the machine\'s limits: [docs/speed.md](docs/speed.md).')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- main

def model_rows(built: dict, costs: dict, args, inputs: dict, labels, timer, autocast, precision: str) -> list[dict]:
    """A row per model and form, its measurements (under '_m') not yet run."""
    rows = []
    for name, base in built.items():
        for form in args.forms:
            if form in ('folded', 'fused', 'compiled-folded') and not has_xsepconv(base):
                continue  # nothing to fold or fuse in eager mode: the plain form is the fused one
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
               precision: str, limits: dict) -> list[dict]:
    """A row per XSepConv of `model` and batch size: it with its block's BN + activation, in each form, and the DW
    conv + BN + activation in the same slot of the partner, with the machine's limit for each."""
    rows = []
    device, memory_format = inputs[1].device, _memory_format(args)
    for layer_name, layer, shape in xsep_layers(model, inputs[1]):
        block_name = layer_name.rsplit('.', 1)[0]
        block, partner_block = model.get_submodule(block_name), partner.get_submodule(block_name)
        dw = nn.Sequential(partner_block.conv_dw, partner_block.bn2).eval()
        folded = copy.deepcopy(layer).eval()
        folded.reparameterize()
        set_fused_op(folded, False)
        fused = copy.deepcopy(layer).eval()
        fused.reparameterize(copy.deepcopy(block.bn2).eval())
        forms = dict(dw_ms=dw, plain_ms=nn.Sequential(layer, block.bn2).eval(),
                     folded_ms=nn.Sequential(folded, copy.deepcopy(block.bn2)).eval(), fused_ms=fused)
        with torch.no_grad():
            out_shape = tuple(dw(torch.zeros(1, *shape, device=device)).shape[1:])
        xsep_macs, dw_macs = count_cost(layer, shape).macs, count_cost(partner_block.conv_dw, shape).macs
        for batch in args.layer_batches:
            x = torch.randn(batch, *shape, generator=generator).to(device, memory_format=memory_format)
            calls = 1 if batch > 1 else args.latency_calls
            rows.append(dict(
                model=name, layer=layer_name, input=shape, kernel=layer.kernel_size, stride=layer.stride, batch=batch,
                precision=precision, mac_ratio=xsep_macs / dw_macs, fused_op=fused.use_fused_op,
                xsep_limit=layer_limit_ms(shape, out_shape, xsep_macs, batch, limits),
                dw_limit=layer_limit_ms(shape, out_shape, dw_macs, batch, limits),
                _m={key: Measurement(latency_measurement(module, x, timer, calls, autocast))
                    for key, module in forms.items()},
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
        if dw is None and row['form'] in ('folded', 'fused'):
            dw = find(partner, precision, 'plain')  # a DW model's folded and fused forms are its plain one
        if dw is None and row['form'] == 'compiled-folded':
            dw = find(partner, precision, 'compiled')
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


def fastest_pairs(rows: list[dict]) -> list[dict]:
    """Each XSepConv model in its fastest measured form against its DW partner in the partner's fastest form,
    separately for eval throughput and batch-1 latency."""
    pairs = []
    for row in rows:
        if row['form'] != 'plain' or dw_partner(row['model']) is None:
            continue
        mine = [r for r in rows if (r['model'], r['precision']) == (row['model'], row['precision'])]
        theirs = [r for r in rows if (r['model'], r['precision']) == (dw_partner(row['model']), row['precision'])]
        if not theirs:
            continue
        x_eval, d_eval = (max(group, key=lambda r: r['eval']['median']) for group in (mine, theirs))
        x_lat, d_lat = (min(group, key=lambda r: r['latency_ms']['median']) for group in (mine, theirs))
        pairs.append(dict(
            model=row['model'], dw=theirs[0]['model'], precision=row['precision'],
            mac_ratio=row['macs'] / theirs[0]['macs'],
            eval_forms=(x_eval['form'], d_eval['form']), eval_ratio=d_eval['eval']['median'] / x_eval['eval']['median'],
            latency_forms=(x_lat['form'], d_lat['form']),
            latency_ratio=x_lat['latency_ms']['median'] / d_lat['latency_ms']['median'],
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

    limits = machine_limits(device, timer)
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
                    layers += layer_rows(name, model, partner, args, inputs, generator, timer, autocast, precision,
                                         limits)

    run_rounds([m for row in rows + layers for m in row['_m'].values()], args.rounds, args.warmup_rounds)
    for row in rows + layers:
        for key, m in row.pop('_m').items():
            row[key] = summary(m.samples) if key in ('eval', 'train') else percentiles(m.samples)

    settings = {k: v for k, v in vars(args).items() if k not in ('json', 'readme', 'section', 'from_json', 'summary')}
    settings['command'] = command
    return dict(machine=describe_machine(), settings=json.loads(json.dumps(settings, default=str)), limits=limits,
                fused_op=op_available(), models=rows, pairs=pair_ratios(rows), fastest=fastest_pairs(rows),
                layers=layers)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        device = torch.device(result['settings']['device'])
        print_and_write(markdown(result), args.readme, args.section or f'benchmark-{device.type}')
        if args.summary:
            print_and_write(readme_summary(result), args.summary, SUMMARY_SECTION)
        return result
    command = 'python ' + shlex.join(['scripts/benchmark.py', *(sys.argv[1:] if argv is None else argv)])
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit(f'--device {args.device}: CUDA is not available here; allowed: cpu')
    section = args.section or f'benchmark-{torch.device(args.device).type}'
    check_section(args.readme, section)
    check_section(args.summary, SUMMARY_SECTION)
    result = benchmark(args, command)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + '\n')
    print_and_write(markdown(result), args.readme, section)
    if args.summary:
        print_and_write(readme_summary(result), args.summary, SUMMARY_SECTION)
    return result


if __name__ == '__main__':
    main()
