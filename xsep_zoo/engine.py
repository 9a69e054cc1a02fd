"""What training, evaluation and export share: batches from in-memory tensors, the schedule, evaluation.

Datasets live in memory as uint8 tensors (`xsep_zoo.data.ImageTensors`). Training batches come
from one of two sources with the same interface (`len()`: steps per epoch, `epoch(e)`: that
epoch's (inputs, labels) on the device). `LoaderBatches`: a DataLoader draws indices and gathers a
batch on the host, and each step's augmentation is seeded from (seed, epoch, step, rank).
`DeviceBatches`: the whole training set lives on the device, which draws each epoch's order and
augmentation at once from a generator seeded by (seed, epoch), so a step never waits for the host
or makes the host wait. Either way a resumed run sees exactly the batches and crops an
uninterrupted one would.
"""
import math
import os
import platform
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .data import DatasetSpec, ImageTensors, apply_augmentation, augment, draw_augmentation, normalize

__all__ = [
    'EpochPermutation', 'image_loader', 'step_generator', 'mix_seed', 'LoaderBatches', 'DeviceBatches',
    'warmup_cosine', 'prepare_images', 'evaluate', 'evaluate_model', 'describe_machine', 'cpu_model',
    'flush_subnormals',
]


class EpochPermutation(Sampler[int]):
    """A random order of the dataset fixed by (seed, epoch): the same in every process and after a resume."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0] >> 1)


def mix_seed(*values: int) -> int:
    """A seed for torch made from several integers (such as seed, epoch, rank): different lists give unrelated seeds."""
    return _mix(*values)


def image_loader(data: ImageTensors, batch_size: int, shuffle_seed: Optional[int] = None) -> DataLoader:
    """Batches of (uint8 images, labels) gathered from memory; shuffled per epoch when given a seed."""
    sampler = EpochPermutation(len(data), shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(
        range(len(data)), batch_size=batch_size, sampler=sampler, drop_last=sampler is not None,
        collate_fn=lambda index: (data.images[index], data.labels[index]),
    )


def step_generator(device: torch.device, seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The generator for one training step's augmentation."""
    return torch.Generator(device=device).manual_seed(_mix(seed, epoch, step, rank))


class LoaderBatches:
    """Training batches of a DataLoader that Accelerate prepared, each augmented with its own step generator.

    The host gathers every batch and Accelerate copies it to the device; per step a new generator
    seeded by (seed, epoch, step, rank) draws the crops. Runs trained this way continue this way.
    """

    def __init__(self, loader: DataLoader, spec: DatasetSpec, seed: int, device: torch.device, rank: int = 0,
                 channels_last: bool = True):
        self.loader, self.spec, self.seed, self.device, self.rank = loader, spec, seed, device, rank
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        """This process's (normalized images, labels) of `epoch`, on the device."""
        self.loader.set_epoch(epoch)
        for step, (images, labels) in enumerate(self.loader):
            generator = step_generator(self.device, self.seed, epoch, step, self.rank)
            yield prepare_images(images, self.spec, self.channels_last, generator), labels


class DeviceBatches:
    """Training batches drawn, gathered and augmented on the device, from the whole training set held there.

    Each epoch draws its order and every image's augmentation at once, on the device, from one
    generator seeded by (seed, epoch); a step then gathers its images and applies its slice of the
    draws: no host work that grows with the batch, and nothing that waits for the device. Every
    process draws the same order and takes its own part of each step (process r of w: rows r*B to
    (r+1)*B of the step's w*B, as Accelerate shards a loader). The images that make no full step
    are left out, so every batch has the same shape, which CUDA graphs need.
    """

    def __init__(self, data: ImageTensors, spec: DatasetSpec, batch_size: int, device, seed: int, rank: int = 0,
                 world: int = 1, channels_last: bool = True):
        if batch_size < 1 or not 0 <= rank < world:
            raise ValueError(f'batch_size {batch_size} must be at least 1 and rank {rank} in [0, {world})')
        self.steps = len(data) // (batch_size * world)
        if self.steps == 0:
            raise ValueError(f'{len(data)} images make no full step of {world} x {batch_size} images')
        self.device = torch.device(device)
        self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
        self.spec, self.batch_size, self.seed, self.rank, self.world = spec, batch_size, seed, rank, world
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.steps

    def plan(self, epoch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This process's image indices of `epoch` [steps, batch] and their augmentation parameters, each [steps, batch]."""
        generator = torch.Generator(device=self.device).manual_seed(_mix(self.seed, epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=generator, device=self.device)
        params = draw_augmentation(self.spec, n, generator)  # for the image at each position of the order
        used = self.steps * self.world * self.batch_size

        def mine(t):
            return t[:used].unflatten(0, (self.steps, self.world, self.batch_size))[:, self.rank]
        return mine(order), [mine(p) for p in params]

    def epoch(self, epoch: int):
        """This process's (normalized images, labels) of `epoch`, on the device."""
        order, params = self.plan(epoch)
        for step in range(self.steps):
            index = order[step]
            images = apply_augmentation(self.images.index_select(0, index), self.spec, [p[step] for p in params])
            yield normalize(images, self.spec, self.channels_last), self.labels.index_select(0, index)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor per optimizer step: linear warm-up over `warmup_steps`, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def prepare_images(
        images: torch.Tensor,
        spec: DatasetSpec,
        channels_last: bool,
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """uint8 batch -> normalized float batch; augmented when a generator is given (training)."""
    if generator is not None:
        images = augment(images, spec, generator)
    return normalize(images, spec, channels_last=channels_last)


def true_class_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Where each image's true class stands among its logits: 0 (top-1) to 4, or 5 when outside the top 5."""
    hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
    return torch.where(hits.any(dim=1), hits.int().argmax(dim=1), 5)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, spec: DatasetSpec, accelerator, channels_last: bool = True,
             per_image: bool = False) -> dict:
    """Top-1, top-5, mean loss and image count over a prepared test loader, exact across processes.

    With `per_image`, also 'ranks': each image's `true_class_ranks`, in the loader's order, a record
    against which any part of the test set can later be checked image by image.
    """
    was_training = model.training
    model.eval()
    ranks, count = [], 0
    loss_sum = 0.0
    for images, labels in loader:
        logits = model(prepare_images(images, spec, channels_last))
        logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
        ranks.append(true_class_ranks(logits, labels).cpu())
        loss_sum += F.cross_entropy(logits, labels, reduction='sum').item()
        count += labels.numel()
    model.train(was_training)
    ranks = torch.cat(ranks)
    correct1, correct5 = int((ranks == 0).sum()), int((ranks < 5).sum())
    metrics = {
        'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count,
        'loss': loss_sum / count, 'correct1': correct1, 'correct5': correct5, 'count': count,
    }
    if per_image:
        metrics['ranks'] = ranks.tolist()
    return metrics


def evaluate_model(
        model: nn.Module,
        test: ImageTensors,
        spec: DatasetSpec,
        batch_size: int = 256,
        channels_last: bool = True,
        per_image: bool = False,
) -> dict:
    """Evaluate `model` on in-memory test images in fp32, outside any training run (see `evaluate`)."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(accelerator.device, memory_format=memory_format)
    loader = accelerator.prepare(image_loader(test, batch_size))
    return evaluate(model, loader, spec, accelerator, channels_last, per_image)


def flush_subnormals() -> bool:
    """Flush subnormal floats to zero on the CPU; returns whether every intra-op thread does.

    Late in a long run, subnormal values (below 1.2e-38) turn up within a training step, and many CPUs
    compute with them in microcode: with the final weights of the 400-epoch CIFAR-10 run, a training
    step of mobilenetv3_small_xsep_100 (batch 128, one thread, an Intel Xeon) took 1532 ms, 2.25x the
    681 ms it takes flushed; fresh weights, and the DW baseline's final ones, were not slowed.
    torch.set_flush_denormal sets the calling thread only, and OpenMP workers copy it when they
    start: call this before the first parallel op. The check multiplies the smallest subnormal
    (bit pattern 1) by one across a tensor large enough to be split over all threads.
    """
    if not torch.set_flush_denormal(True):
        return False
    smallest = torch.ones(1 << 20, dtype=torch.int32).view(torch.float32)
    return not bool((smallest * 1.0).view(torch.int32).count_nonzero())


def describe_machine(num_processes: int = 1) -> str:
    """Where a run ran, for model cards: the CPU model and thread count, or the GPU."""
    if torch.cuda.is_available():
        device = f'{num_processes} x {torch.cuda.get_device_name()}'
    else:
        device = f'{cpu_model()}, {_count(torch.get_num_threads(), "thread")} x {_count(num_processes, "process")}'
    return f'{device}, torch {torch.__version__}'


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), which can be fewer than
    the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _count(n: int, noun: str) -> str:
    return f'{n} {noun}' if n == 1 else f'{n} {noun}es' if noun.endswith('s') else f'{n} {noun}s'


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'
