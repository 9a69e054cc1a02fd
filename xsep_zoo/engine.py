"""What training, evaluation and export share: loaders over in-memory tensors, the schedule, evaluation.

Datasets live in memory as uint8 tensors (`xsep_zoo.data.ImageTensors`); a loader only draws
indices and gathers a batch, and augmentation runs on the whole batch on the device. Every random
choice is seeded from (seed, epoch, step), so a resumed run sees exactly the batches and crops an
uninterrupted one would.
"""
import math
import platform
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .data import DatasetSpec, ImageTensors, augment, normalize

__all__ = [
    'EpochPermutation', 'image_loader', 'step_generator', 'warmup_cosine', 'prepare_images', 'evaluate',
    'evaluate_model', 'describe_machine', 'cpu_model', 'flush_subnormals',
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


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, spec: DatasetSpec, accelerator, channels_last: bool = True) -> dict:
    """Top-1, top-5, mean loss and image count over a prepared test loader, exact across processes."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = count = 0
    loss_sum = 0.0
    for images, labels in loader:
        logits = model(prepare_images(images, spec, channels_last))
        logits, labels = accelerator.gather_for_metrics((logits.float(), labels))
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
        loss_sum += F.cross_entropy(logits, labels, reduction='sum').item()
        count += labels.numel()
    model.train(was_training)
    return {
        'top1': 100.0 * correct1 / count, 'top5': 100.0 * correct5 / count,
        'loss': loss_sum / count, 'correct1': correct1, 'correct5': correct5, 'count': count,
    }



def evaluate_model(
        model: nn.Module,
        test: ImageTensors,
        spec: DatasetSpec,
        batch_size: int = 256,
        channels_last: bool = True,
) -> dict:
    """Evaluate `model` on in-memory test images in fp32, outside any training run."""
    from accelerate import Accelerator
    accelerator = Accelerator()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(accelerator.device, memory_format=memory_format)
    loader = accelerator.prepare(image_loader(test, batch_size))
    return evaluate(model, loader, spec, accelerator, channels_last)


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
