"""Measure the data path against a training step: the project wants data under 10 % of a step.

For CIFAR-10 (the Hub's, or a local copy with --source) and Tiny-ImageNet-style data (synthetic
64x64 uint8: the augmentation's cost does not depend on the pixels): the per-batch cost of index gather + augment + normalize, against one SGD step of
`mobilenetv3_small_xsep_100` (channels_last, fp32) on the same batch size and crop size. The
one-time decode of the CIFAR-10 train split is reported too.

    python scripts/data_speed.py --source $DATA                  # markdown table to stdout
    python scripts/data_speed.py --readme docs/training.md       # also rewrite the data-speed section there
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn

import xsep_zoo  # noqa: F401  (registers the models)
from readme_section import check_section, print_and_write
from xsep_zoo.data import DATASETS, DatasetSpec, ImageTensors, augment, load_train, normalize
from xsep_zoo.engine import cpu_model

SECTION = 'data-speed'


def median_ms(fn: Callable[[int], object], repeats: int, warmup: int) -> float:
    """Median wall time of fn(i) in milliseconds, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def data_ms(data: ImageTensors, spec: DatasetSpec, batch_size: int, repeats: int) -> float:
    """One training batch of the data path: random indices, gather, augment, normalize (channels_last)."""
    generator = torch.Generator()

    def batch(step: int):
        generator.manual_seed(step)  # as the trainer does: one seed per step
        index = torch.randint(len(data), (batch_size,), generator=generator)
        images, labels = data.images[index], data.labels[index]
        return normalize(augment(images, spec, generator), spec), labels

    return median_ms(batch, repeats, warmup=5)


def step_ms(spec: DatasetSpec, batch_size: int, repeats: int, warmup: int) -> float:
    """One SGD step (forward, loss, backward, update) on a normalized channels_last batch."""
    model = timm.create_model('mobilenetv3_small_xsep_100', num_classes=spec.num_classes)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=6e-5)
    loss_fn = nn.CrossEntropyLoss()
    size = spec.train_size
    images = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(spec.num_classes, (batch_size,))

    def step(_: int):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return median_ms(step, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', type=Path, help='a local CIFAR-10 copy in the Hub layout (default: the Hub)')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--data-repeats', type=int, default=200, help='timed data batches per dataset')
    parser.add_argument('--step-repeats', type=int, default=20, help='timed training steps per dataset')
    parser.add_argument('--threads', type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument('--readme', type=Path, help=f'rewrite the {SECTION} section of this file')
    args = parser.parse_args()
    check_section(args.readme, SECTION)

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.
    if load > 0.5:  # with a core taken, torch's threads wait on each other: every number inflates
        print(f'warning: load average {load:.2f} before starting; other processes share the CPU and the '
              f'timings will be too high', file=sys.stderr)
    start = time.perf_counter()
    cifar = load_train('cifar10', args.source)
    decode_s = time.perf_counter() - start
    # Tiny-ImageNet-sized synthetic data: the augmentation's cost does not depend on the pixels
    tiny_spec = DATASETS['tiny_imagenet']
    tiny = ImageTensors(torch.randint(0, 256, (10_000, 3, 64, 64), dtype=torch.uint8),
                        torch.randint(tiny_spec.num_classes, (10_000,)))

    rows = []
    for label, spec, data in (('CIFAR-10', DATASETS['cifar10'], cifar),
                              ('Tiny-ImageNet (synthetic 64x64)', tiny_spec, tiny)):
        data_t = data_ms(data, spec, args.batch_size, args.data_repeats)
        step_t = step_ms(spec, args.batch_size, args.step_repeats, warmup=3)
        rows.append(f'| {label} | `{spec.augmentation}` | {spec.image_size} -> {spec.train_size} '
                    f'| {data_t:.2f} | {step_t:.0f} | {100 * data_t / step_t:.2f} % |')

    command = 'python scripts/data_speed.py' + (' --source $DATA' if args.source else '') + (
        f' --threads {args.threads}' if args.threads else '')
    table = '\n'.join([
        f'Data path vs. training step, batch {args.batch_size}, written by `{command}` on {cpu_model()} '
        f'(torch {torch.__version__}, {torch.get_num_threads()} intra-op threads). '
        f'Data = index gather + augment + normalize (median of {args.data_repeats}); step = forward + backward + '
        f'SGD of `mobilenetv3_small_xsep_100`, fp32, channels_last (median of {args.step_repeats} after 3 warm-up).',
        '',
        '| data | augmentation | image -> crop | data (ms / batch) | train step (ms) | data / step |',
        '|---|---|---|---:|---:|---:|',
        *rows,
        '',
        f'Decoding the CIFAR-10 train split ({len(cifar):,} JPEGs) into memory, once per run: {decode_s:.1f} s.',
    ]) + '\n'
    print_and_write(table, args.readme, SECTION)


if __name__ == '__main__':
    main()
