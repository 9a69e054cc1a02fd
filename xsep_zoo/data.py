"""The data path: CIFAR-10/100, SVHN and Tiny-ImageNet as in-memory uint8 tensors, augmented per batch.

Every split is read with `datasets.load_dataset` (from the Hub, a local folder in a Hub repo's
layout, or parquet files) and decoded once into a uint8 [N, 3, H, W] tensor: these images are small
enough that holding a whole split in memory is cheaper than decoding per step, and it leaves the
training loop without DataLoader workers. Augmentation then runs on a whole batch at once in torch,
on the batch's device, and draws every random choice from a `torch.Generator` the caller passes, so
a seeded generator makes a resumed run see exactly the same crops and flips. Drawing is apart from
applying (`draw_augmentation`, `apply_augmentation`), so that a whole epoch's choices can be drawn at once.
"""
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import datasets
import numpy as np
import PIL
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from huggingface_hub import metadata_load

from ._checks import check_choice
from .constants import (
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, SVHN_MEAN, SVHN_STD, TINY_IMAGENET_MEAN,
    TINY_IMAGENET_STD,
)
from .hub import sha256_file

__all__ = [
    'AUGMENTATIONS', 'DATASETS', 'DataError', 'DataNotFoundError', 'DatasetSpec', 'ImageTensors', 'get_spec',
    'load_split', 'load_train', 'load_test', 'describe_source', 'augment', 'draw_augmentation', 'apply_augmentation',
    'random_crop_flip', 'crop_flip', 'random_resized_crop_flip', 'resized_crop_flip', 'normalize',
]

AUGMENTATIONS = ('crop_flip', 'none', 'random_resized_crop_flip')
_DECODE_CHUNK = 4096  # rows decoded per step: bounds the memory held in encoded bytes
CROP_PADDING = 4  # 'crop_flip' pads every side by this many zero pixels before cropping


class DataError(ValueError):
    """Data the loaders cannot use: the message names the file, split, row or value and what to do.

    One class, so that a script can print any of them as one line instead of a traceback.
    """


class DataNotFoundError(DataError, FileNotFoundError):
    """A source that does not exist; still a FileNotFoundError for callers that catch that."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives on the Hub, its schema, and how it is trained and tested.

    `image_size` is the stored side of every image, `train_size` the side of the training crops
    (testing uses the full stored image).
    """
    name: str
    hub_id: str
    config: str | None
    image_column: str
    label_column: str
    train_splits: tuple[str, ...]
    test_split: str
    num_classes: int
    image_size: int
    train_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augmentation: str

    def __post_init__(self):
        check_choice('augmentation', self.augmentation, AUGMENTATIONS)


DATASETS: dict[str, DatasetSpec] = {
    'cifar10': DatasetSpec(
        'cifar10', 'uoft-cs/cifar10', 'plain_text', 'img', 'label', ('train',), 'test',
        num_classes=10, image_size=32, train_size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD,
        augmentation='crop_flip'),
    'cifar100': DatasetSpec(
        'cifar100', 'uoft-cs/cifar100', 'cifar100', 'img', 'fine_label', ('train',), 'test',
        num_classes=100, image_size=32, train_size=32, mean=CIFAR100_MEAN, std=CIFAR100_STD,
        augmentation='crop_flip'),
    # the paper trains on train + extra (604,388 images) and augments nothing
    'svhn': DatasetSpec(
        'svhn', 'ufldl-stanford/svhn', 'cropped_digits', 'image', 'label', ('train', 'extra'), 'test',
        num_classes=10, image_size=32, train_size=32, mean=SVHN_MEAN, std=SVHN_STD,
        augmentation='none'),
    # 64x64 stored; trained on 56x56 random-resized crops, tested on the full 64x64 image
    'tiny_imagenet': DatasetSpec(
        'tiny_imagenet', 'zh-plus/tiny-imagenet', None, 'image', 'label', ('train',), 'valid',
        num_classes=200, image_size=64, train_size=56, mean=TINY_IMAGENET_MEAN, std=TINY_IMAGENET_STD,
        augmentation='random_resized_crop_flip'),
}


@dataclass
class ImageTensors:
    """A decoded split: uint8 images [N, 3, H, W] (contiguous), int64 labels [N], and the class names
    when the label column is a `ClassLabel` (else None)."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)


Source = str | Path | Mapping[str, str | Path | Sequence[str | Path]] | None


def get_spec(dataset: str) -> DatasetSpec:
    """The spec of a dataset by name; the error lists the names there are."""
    check_choice('dataset', dataset, tuple(DATASETS))
    return DATASETS[dataset]


# --- loading -------------------------------------------------------------------------------------

def _folder_kwargs(folder: Path, spec: DatasetSpec) -> dict:
    """`load_dataset` arguments for a local folder, laid out like the Hub repo or as plain parquet files.

    A README that declares configs (the Hub repos of CIFAR-10/100 and SVHN) is followed as is, with
    the spec's config where the folder has one of that name. Without declared configs `load_dataset`
    only knows the split names train/validation/test by keyword (it drops SVHN's 'extra' and renames
    a top-level 'valid' to 'validation'), so the '<split>-*.parquet' files are listed explicitly,
    from the config's subfolder, 'data/' (Tiny-ImageNet's layout) or the folder itself.
    """
    readme = folder / 'README.md'
    configs = (metadata_load(readme) or {}).get('configs') if readme.is_file() else None
    if configs:
        names = [c.get('config_name', 'default') for c in configs]
        return dict(name=spec.config if spec.config in names else None)
    for sub in (spec.config, 'data', '.'):
        if sub is None or not (folder / sub).is_dir():
            continue
        splits = sorted({m.group(1) for f in (folder / sub).glob('*.parquet')
                         if (m := re.match(r'(.+?)-.*\.parquet$', f.name))})
        if splits:
            return dict(data_files={s: (Path(sub) / f'{s}-*.parquet').as_posix() for s in splits})
    return {}  # some other layout: let load_dataset infer it


def _check_split(spec: DatasetSpec, split: str, available: Sequence[str], where: str) -> None:
    if split not in available:
        raise DataError(
            f'unknown split {split!r} of {spec.name} in {where}; available: {", ".join(map(repr, available))}')


def _unreadable_parquet(files: Sequence[str]) -> tuple[str, str] | None:
    """The first local parquet file in `files` that pyarrow cannot read through, with pyarrow's reason.

    Only called after preparing the splits failed, to name the file: reading every file through
    costs a pass over the data, but `datasets` reports a damaged file without its name.
    """
    for file in files:
        if not (file.endswith('.parquet') and Path(file).is_file()):
            continue  # the Hub's hf:// files, or another format: left to the original error
        try:
            for _ in pq.ParquetFile(file).iter_batches(batch_size=_DECODE_CHUNK):
                pass
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... depending on the damage
            return file, str(e)
    return None


def _load_rows(spec: DatasetSpec, split: str, source: Source) -> tuple[datasets.Dataset, str]:
    """One split as an (undecoded) `datasets.Dataset`, and the source's description for errors.

    Checks that the source has that split, that its files are readable parquet files and that the
    split has rows, with errors that name the file or split. As `load_dataset` does, preparing one
    split prepares all of the config's splits (into the `datasets` cache, once).
    """
    if isinstance(source, Mapping):
        _check_split(spec, split, tuple(source), 'the data_files mapping')
        files = source[split]
        files = [str(f) for f in files] if isinstance(files, (list, tuple)) else str(files)
        path, kwargs = 'parquet', dict(data_files={split: files})
        where = ', '.join(files) if isinstance(files, list) else files
    elif source is None:
        path, kwargs, where = spec.hub_id, dict(name=spec.config), f'the Hub repo {spec.hub_id}'
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise DataNotFoundError(f'{spec.name} source folder {str(folder)!r} does not exist')
        path, kwargs, where = str(folder), _folder_kwargs(folder, spec), str(folder)
    try:
        builder = datasets.load_dataset_builder(path, **kwargs)
    except (ConnectionError, FileNotFoundError) as e:
        if source is None:  # offline, or the Hub unreachable
            raise DataNotFoundError(
                f'{spec.name}: the Hub dataset {spec.hub_id} could not be reached ({str(e).splitlines()[0]}); '
                'connect to the Hub, or pass a local copy in the Hub layout (--data-source)') from e
        raise DataNotFoundError(f'{spec.name} split {split!r}: {e}; check the path') from e
    data_files = builder.config.data_files
    if data_files is not None and not isinstance(source, Mapping):
        # resolving the files is cheap; preparing the dataset is not
        _check_split(spec, split, tuple(str(s) for s in data_files), where)
    try:
        builder.download_and_prepare()
    except Exception as e:
        bad = _unreadable_parquet([f for split_files in (data_files or {}).values() for f in split_files])
        if bad is None:
            raise
        raise DataError(
            f'{bad[0]}: not a readable parquet file ({bad[1]}); this {spec.name} file is damaged or incomplete: '
            f'download or copy it again') from e
    info = builder.info.splits.get(split)
    if info is not None and not info.num_examples:
        listed = ', '.join(data_files[split]) if data_files and split in data_files else where
        raise DataError(
            f'{spec.name} split {split!r} has no images: 0 rows in {listed}; download or copy that split again')
    return builder.as_dataset(split=split), where


def _check_columns(spec: DatasetSpec, ds: datasets.Dataset, split: str) -> tuple[str, ...] | None:
    """Check the image and label columns; return the class names when the labels are a ClassLabel."""
    for what, column in (('image', spec.image_column), ('label', spec.label_column)):
        if column not in ds.column_names:
            raise DataError(
                f'{spec.name} split {split!r} has no {what} column {column!r}; columns: '
                f'{", ".join(map(repr, ds.column_names))}')
    if not isinstance(ds.features[spec.image_column], datasets.Image):
        raise DataError(
            f'{spec.name} column {spec.image_column!r} is {ds.features[spec.image_column]}, not an Image feature')
    label = ds.features[spec.label_column]
    if isinstance(label, datasets.ClassLabel):
        if label.num_classes != spec.num_classes:
            raise DataError(
                f'{spec.name} label column {spec.label_column!r} has {label.num_classes} classes, '
                f'expected {spec.num_classes}')
        return tuple(label.names)
    return None


def _undecodable(
        spec: DatasetSpec,
        split: str,
        row: int,
        where: str,
        value: dict | None,
        error: Exception | None,
) -> DataError:
    """The error for an image that does not decode; for bytes of no known format PIL's own message
    names a BytesIO object, so the first bytes are shown instead (an HTML page, zeros, ...)."""
    if value is None:
        what = 'is missing (null)'
    else:
        data = value.get('bytes')
        reason = (f'{len(data)} bytes starting {data[:8]!r}: not an image format PIL reads'
                  if data is not None and isinstance(error, PIL.UnidentifiedImageError)
                  else f'{type(error).__name__}: {error}')
        what = f'could not be decoded ({reason})'
    return DataError(
        f'{spec.name} split {split!r} row {row} in {where}: the image in column {spec.image_column!r} {what}; '
        f'the data is damaged: download or copy that split again')


def _decode_rgb(
        spec: DatasetSpec,
        ds: datasets.Dataset,
        rows: np.ndarray,
        split: str,
        where: str,
        out: torch.Tensor,
) -> None:
    """Decode the images of `rows` of `ds` into `out` (uint8 [len(rows), 3, S, S]), as RGB.

    `datasets.Image(mode='RGB')` converts any mode (grayscale 'L', 'P', RGBA, CMYK) to RGB; alpha is
    dropped, not composited. Decoding one image at a time in this thread is the fastest way here:
    32x32 JPEGs take tens of microseconds each, and threads only contend for the GIL. `where`
    names the source in errors.
    """
    size = spec.image_size
    feature = datasets.Image(mode='RGB')
    column = ds.select_columns([spec.image_column]).with_format('arrow')
    for start in range(0, len(rows), _DECODE_CHUNK):
        chunk = rows[start:start + _DECODE_CHUNK]
        values = column[chunk.tolist()].column(0).to_pylist()  # [{'bytes': ..., 'path': ...}, ...]
        buffer = np.empty((len(chunk), size, size, 3), dtype=np.uint8)
        for i, value in enumerate(values):
            try:
                image = feature.decode_example(value) if value is not None else None
            except Exception as e:  # PIL.UnidentifiedImageError, OSError for a truncated file, ...
                raise _undecodable(spec, split, int(chunk[i]), where, value, e) from e
            if image is None:
                raise _undecodable(spec, split, int(chunk[i]), where, None, None)
            if image.size != (size, size):
                raise DataError(
                    f'{spec.name} split {split!r} row {int(chunk[i])} is {image.size[0]}x{image.size[1]}, '
                    f'expected {size}x{size}')
            buffer[i] = np.asarray(image)
        out[start:start + len(chunk)] = torch.from_numpy(buffer).permute(0, 3, 1, 2)


def _to_tensors(
        spec: DatasetSpec,
        parts: Sequence[tuple[str, datasets.Dataset, str]],
        limit: int | None,
        seed: int,
) -> ImageTensors:
    """Decode the (split, rows, source) `parts` one after the other, or a seeded random subset of `limit` rows."""
    classes = None
    for split, ds, _ in parts:
        classes = _check_columns(spec, ds, split)
    sizes = [len(ds) for _, ds, _ in parts]
    total = sum(sizes)
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be a positive number of rows or None, got {limit!r}')
    if limit is None or limit >= total:
        picked = np.arange(total)
    else:  # a random subset, kept in order: CIFAR-10's test split is sorted by class
        generator = torch.Generator().manual_seed(seed)
        picked = np.sort(torch.randperm(total, generator=generator)[:limit].numpy())
    images = torch.empty((len(picked), 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    labels, done, offset = [], 0, 0
    for (split, ds, where), size in zip(parts, sizes):
        rows = picked[(picked >= offset) & (picked < offset + size)] - offset
        _decode_rgb(spec, ds, rows, split, where, images[done:done + len(rows)])
        split_labels = np.asarray(ds.select_columns([spec.label_column]).with_format('arrow')[spec.label_column])
        labels.append(torch.from_numpy(split_labels[rows].astype(np.int64)))
        done, offset = done + len(rows), offset + size
    labels = torch.cat(labels)
    bad = ((labels < 0) | (labels >= spec.num_classes)).nonzero()
    if len(bad):
        raise DataError(
            f'{spec.name} label {int(labels[bad[0, 0]])} at decoded row {int(bad[0, 0])} is outside '
            f'[0, {spec.num_classes})')
    return ImageTensors(images, labels, classes)


def load_split(
        dataset: str,
        split: str,
        source: Source = None,
        limit: int | None = None,
        seed: int = 0,
) -> ImageTensors:
    """Load and decode one split of `dataset` (a key of DATASETS) into memory.

    `source`: None reads the Hub repo; a folder reads a local copy in the Hub repo's layout (or plain
    '<split>-*.parquet' files, optionally in a config or 'data' subfolder); a mapping split -> parquet
    file, glob or list of them reads those files. Prepared data goes to the `datasets` cache (set by
    HF_DATASETS_CACHE / HF_HOME), never into the source folder. `limit` keeps a random subset of that
    many rows, drawn with `seed` and kept in their original order; only those rows are decoded.
    """
    spec = get_spec(dataset)
    return _to_tensors(spec, [(split, *_load_rows(spec, split, source))], limit, seed)


def load_train(dataset: str, source: Source = None, limit: int | None = None, seed: int = 0) -> ImageTensors:
    """The training set: the spec's train splits, concatenated in order (SVHN: train + extra).

    `limit` draws its subset from the concatenation.
    """
    spec = get_spec(dataset)
    return _to_tensors(spec, [(s, *_load_rows(spec, s, source)) for s in spec.train_splits], limit, seed)


def describe_source(dataset: str, source: Source = None) -> dict:
    """What a dataset source is, for a model card: its name, and for a local copy the sha256 of its test files.

    A local copy is named by its README's `pretty_name` (else its folder name) and identified by the
    sha256 of its test-split parquet files, so a card never names a path of the machine it was made on,
    and a later evaluation can tell whether it reads the same test images.
    """
    spec = get_spec(dataset)
    if source is None:
        return dict(name=spec.hub_id, hub_id=spec.hub_id)
    if isinstance(source, Mapping):
        files = source[spec.test_split]
        files = [Path(f) for f in (files if isinstance(files, (list, tuple)) else [files])]
        name = f'a local copy of {spec.hub_id}'
    else:
        folder = Path(source)
        files = sorted(folder.rglob(f'{spec.test_split}-*.parquet'))
        readme = folder / 'README.md'
        titles = [line.split(':', 1)[1].strip() for line in (readme.read_text().splitlines() if readme.is_file()
                                                             else ()) if line.startswith('pretty_name:')]
        name = titles[0] if titles else f'a local copy of {spec.hub_id} ({folder.name})'
    return dict(name=name, test_files_sha256=sorted(sha256_file(f) for f in files))


def load_test(dataset: str, source: Source = None, limit: int | None = None, seed: int = 0) -> ImageTensors:
    """The test set: the spec's test split (Tiny-ImageNet: 'valid')."""
    return load_split(dataset, get_spec(dataset).test_split, source, limit, seed)


# --- batch transforms ----------------------------------------------------------------------------

def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected an image batch [B, 3, H, W], got shape {tuple(images.shape)}')


def _uniform(n: int, generator: torch.Generator, low: float = 0., high: float = 1., cols: int | None = None):
    # drawn on the generator's device (usually the CPU) in float64: the same seed gives the same
    # parameters whatever device the batch is on
    shape = (n,) if cols is None else (n, cols)
    return torch.empty(shape, dtype=torch.float64, device=generator.device).uniform_(low, high, generator=generator)


def random_crop_flip(
        images: torch.Tensor,
        generator: torch.Generator,
        size: int | None = None,
        padding: int = 4,
        flip_prob: float = 0.5,
) -> torch.Tensor:
    """Zero-pad by `padding`, crop a random `size` square per image and flip it horizontally with `flip_prob`.

    The standard CIFAR augmentation, done as one gather for the whole batch. The uint8 result has
    channels_last strides (the gather's natural order), which `normalize` keeps.
    """
    _check_batch(images)
    b, _, h, w = images.shape
    size = size or h
    if size > min(h, w) + 2 * padding:
        raise ValueError(f'crop size {size} is larger than the padded image {h + 2 * padding}x{w + 2 * padding}')
    top, left, flip = _crop_flip_params(b, h + 2 * padding - size, w + 2 * padding - size, flip_prob, generator)
    return crop_flip(images, top, left, flip, size, padding)


def _crop_flip_params(n: int, max_y: int, max_x: int, flip_prob: float, generator: torch.Generator):
    """(top, left, flip) of `n` crops, each offset uniform in [0, max]."""
    top = (_uniform(n, generator) * (max_y + 1)).long().clamp_(max=max_y)
    left = (_uniform(n, generator) * (max_x + 1)).long().clamp_(max=max_x)
    flip = _uniform(n, generator) < flip_prob
    return top, left, flip


def crop_flip(
        images: torch.Tensor,
        top: torch.Tensor,
        left: torch.Tensor,
        flip: torch.Tensor,
        size: int,
        padding: int = 4,
) -> torch.Tensor:
    """The `size` square of each zero-padded image at (top, left) in the padded image, flipped where `flip`."""
    b = images.shape[0]
    top, left, flip = (t.to(images.device) for t in (top, left, flip))
    ramp = torch.arange(size, device=images.device)
    rows = top[:, None] + ramp
    cols = left[:, None] + ramp
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(images, (padding,) * 4).permute(0, 2, 3, 1)  # B, H, W, C
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _rrc_boxes(
        n: int,
        height: int,
        width: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, box height, box width) of `n` boxes, as torchvision's RandomResizedCrop.get_params.

    Each image gets 10 tries of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the
    first box that fits is placed uniformly. When none fits it takes the central crop with the
    ratio clamped to `ratio` (the whole image when its own ratio is inside).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target_area = area * _uniform(n, generator, scale[0], scale[1], cols=10)
    aspect = torch.exp(_uniform(n, generator, log_ratio[0], log_ratio[1], cols=10))
    w = torch.sqrt(target_area * aspect).round().long()  # round half to even, like Python's round()
    h = torch.sqrt(target_area / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits
    found = fits.any(1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    box_w = torch.where(found, w.gather(1, first)[:, 0], fallback_w)
    box_h = torch.where(found, h.gather(1, first)[:, 0], fallback_h)
    top = (_uniform(n, generator) * (height - box_h + 1)).long().minimum(height - box_h)
    left = (_uniform(n, generator) * (width - box_w + 1)).long().minimum(width - box_w)
    top = torch.where(found, top, (height - box_h) // 2)
    left = torch.where(found, left, (width - box_w) // 2)
    return top, left, box_h, box_w


def random_resized_crop_flip(
        images: torch.Tensor,
        size: int,
        generator: torch.Generator,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(flip_prob) for a batch.

    Each image gets its own box; all boxes are resampled to `size` x `size` by one `grid_sample`,
    bilinear with half-pixel centres and edges clamped to the box: the same as cropping and then
    resizing with `F.interpolate(mode='bilinear', align_corners=False)`, without antialiasing
    (boxes are at most 64/56 = 1.14x larger than the output here). The flip is folded into the grid.
    Returns float32 in [0, 255], not rounded back to integers.
    """
    _check_batch(images)
    b, _, height, width = images.shape
    top, left, box_h, box_w = _rrc_boxes(b, height, width, scale, ratio, generator)
    flip = _uniform(b, generator) < flip_prob
    return resized_crop_flip(images, size, top, left, box_h, box_w, flip)


def resized_crop_flip(
        images: torch.Tensor,
        size: int,
        top: torch.Tensor,
        left: torch.Tensor,
        box_h: torch.Tensor,
        box_w: torch.Tensor,
        flip: torch.Tensor,
) -> torch.Tensor:
    """Each image's box (top, left, box_h, box_w) resampled to `size` x `size`, flipped where `flip` (float32)."""
    b, _, height, width = images.shape
    top, left, box_h, box_w, flip = (t.to(images.device) for t in (top, left, box_h, box_w, flip))
    centres = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size  # in (0, 1)
    ys = torch.minimum((top[:, None] + centres * box_h[:, None] - 0.5).clamp(min=top[:, None]),
                       top[:, None] + box_h[:, None] - 1)
    xs = torch.minimum((left[:, None] + centres * box_w[:, None] - 0.5).clamp(min=left[:, None]),
                       left[:, None] + box_w[:, None] - 1)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    # pixel index -> [-1, 1] with align_corners=True: -1 and 1 are the centres of the edge pixels
    gx = (2 * xs / max(width - 1, 1) - 1)[:, None, :].expand(b, size, size)
    gy = (2 * ys / max(height - 1, 1) - 1)[:, :, None].expand(b, size, size)
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(images.float(), grid, mode='bilinear', padding_mode='border', align_corners=True)


def augment(images: torch.Tensor, spec: DatasetSpec, generator: torch.Generator) -> torch.Tensor:
    """Apply the spec's training augmentation to a uint8 batch [B, 3, S, S] of stored images.

    'crop_flip' and 'none' return uint8; 'random_resized_crop_flip' returns float32 in [0, 255]
    ([B, 3, train_size, train_size]). Random parameters come only from `generator` (on its own
    device; the result is on the batch's device), so the same seed gives the same batch.
    """
    _check_stored(images, spec)
    return apply_augmentation(images, spec, draw_augmentation(spec, images.shape[0], generator))


def draw_augmentation(spec: DatasetSpec, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The random parameters of the spec's augmentation for `n` images, one row each, on the generator's device.

    `augment(images, spec, g)` is `apply_augmentation(images, spec, draw_augmentation(spec, len(images), g))`;
    drawing apart from applying lets a caller draw a whole epoch's parameters at once and apply a
    slice of them per batch. 'crop_flip': (top, left, flip); 'random_resized_crop_flip': (top,
    left, box height, box width, flip); 'none': ().
    """
    size = spec.image_size
    if spec.augmentation == 'crop_flip':
        largest = size + 2 * CROP_PADDING - spec.train_size
        return _crop_flip_params(n, largest, largest, 0.5, generator)
    if spec.augmentation == 'random_resized_crop_flip':
        boxes = _rrc_boxes(n, size, size, (0.08, 1.0), (3 / 4, 4 / 3), generator)
        return (*boxes, _uniform(n, generator) < 0.5)
    return ()


def apply_augmentation(images: torch.Tensor, spec: DatasetSpec, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The spec's augmentation of a uint8 batch with the parameters `draw_augmentation` drew for its images."""
    _check_stored(images, spec)
    if spec.augmentation == 'crop_flip':
        return crop_flip(images, *params, size=spec.train_size, padding=CROP_PADDING)
    if spec.augmentation == 'random_resized_crop_flip':
        return resized_crop_flip(images, spec.train_size, *params)
    return images


def _check_stored(images: torch.Tensor, spec: DatasetSpec) -> None:
    _check_batch(images)
    if images.dtype != torch.uint8:
        raise ValueError(f'augment expects uint8 images, got {images.dtype}')
    if images.shape[-2:] != (spec.image_size, spec.image_size):
        raise ValueError(
            f'{spec.name} images are {spec.image_size}x{spec.image_size}, got {tuple(images.shape[-2:])}')


def normalize(images: torch.Tensor, spec: DatasetSpec, channels_last: bool = True) -> torch.Tensor:
    """(images / 255 - mean) / std as float32, in channels_last memory format unless told otherwise.

    Takes uint8 or float images in [0, 255]; the result is always a new tensor.
    """
    _check_batch(images)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(torch.float32, memory_format=memory_format, copy=True)
    mean, std = _mean_std(spec.mean, spec.std, x.device)
    return x.sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    # made once per device: a tensor made from Python numbers on a GPU is a host-to-device copy, which
    # waits for the work queued before it
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    return mean, std
