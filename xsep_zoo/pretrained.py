"""What the zoo has published, and which of it timm loads by default.

`published.json` beside this file maps each published Hub folder `<model>.<tag>` to the dataset
its weights were trained on and their measured top-1. The registry (mobilenetv3_xsep.py) builds
its pretrained cfgs from it: only published tags have weights, and each architecture's default is
its best. scripts/export.py adds a folder with `record_published`; `rebuild_published` rewrites the
record from the Hub folders themselves.
"""
import json
import math
import os
from pathlib import Path
from typing import Optional, Union

from .constants import CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD
from .hub import CONFIG_NAME, WeightsError, read_hub_config, read_record

__all__ = [
    'PUBLISHED_PATH', 'PUBLISHED', 'DATASET_CFGS', 'UNTRAINED_TAG', 'read_published', 'published_entry',
    'published_from_hub', 'write_published', 'record_published', 'rebuild_published', 'ranked_tags', 'published_tags',
    'check_weights_request',
]

PUBLISHED_PATH = Path(__file__).with_name('published.json')
# What the pretrained cfg says of weights trained on each dataset, the zoo's main one first: its weights are
# an architecture's default. Weights on another dataset can be published once it has a line here.
DATASET_CFGS: dict[str, dict] = {
    'cifar10': dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, label_names=CIFAR10_LABELS),
}
# timm's tag for an architecture registered without weights
UNTRAINED_TAG = 'untrained'

Record = dict[str, dict]  # '<model>.<tag>' -> {'dataset': ..., 'top1': ...}


def _check_entry(name: str, entry: dict, origin: Union[str, Path]) -> dict:
    model, _, tag = name.partition('.')
    if not model or not tag or not isinstance(entry, dict):
        raise ValueError(f"{origin}: entry {name!r}: expected '<model>.<tag>' mapped to its dataset and top-1")
    if entry.get('dataset') not in DATASET_CFGS:
        raise ValueError(f'{origin}: {name}: dataset {entry.get("dataset")!r} has no pretrained cfg (known: '
                         f'{", ".join(DATASET_CFGS)}); add its line to DATASET_CFGS in xsep_zoo/pretrained.py first')
    top1 = entry.get('top1')
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not math.isfinite(top1):
        raise ValueError(f'{origin}: {name}: top1 is {top1!r}, expected a finite number (percent)')
    return dict(dataset=entry['dataset'], top1=top1)


def read_published(path: Union[str, Path] = PUBLISHED_PATH) -> Record:
    """The record of published weights, checked entry by entry."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: cannot read the record of published weights ({e})') from None
    if not isinstance(record, dict):
        raise ValueError(f'{path}: expected a JSON object, found {type(record).__name__}')
    return {name: _check_entry(name, entry, path) for name, entry in record.items()}


def published_entry(folder: Union[str, Path]) -> tuple[str, dict]:
    """('<model>.<tag>', {dataset, top1}) of an exported Hub folder, from the results in its record."""
    folder = Path(folder)
    config = read_hub_config(folder / CONFIG_NAME)
    name = f"{config.get('architecture')}.{(config.get('pretrained_cfg') or {}).get('tag')}"
    if folder.name != name:
        raise ValueError(f'{folder}: its config.json is for {name}; a Hub folder is named after its <model>.<tag>')
    results = read_record(folder)
    return name, _check_entry(name, dict(dataset=results.get('dataset'), top1=results.get('top1')), folder)


def published_from_hub(hub_root: Union[str, Path]) -> Record:
    """The record of every exported Hub folder under `hub_root` (folders of runs still training hold none)."""
    return dict(published_entry(config.parent) for config in sorted(Path(hub_root).glob(f'*/{CONFIG_NAME}')))


def write_published(record: Record, path: Union[str, Path] = PUBLISHED_PATH) -> None:
    """Write the record as sorted, indented JSON (a diff shows one line per change), replacing `path` at once."""
    path = Path(path)
    record = {name: _check_entry(name, record[name], path) for name in sorted(record)}
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, path)


def record_published(folder: Union[str, Path], path: Union[str, Path] = PUBLISHED_PATH) -> Record:
    """Add or update the entry of an exported Hub folder in the record; returns the new record."""
    name, entry = published_entry(folder)
    record = read_published(path) if Path(path).exists() else {}
    record[name] = entry
    write_published(record, path)
    return record


def rebuild_published(hub_root: Union[str, Path], path: Union[str, Path] = PUBLISHED_PATH) -> Record:
    """Rewrite the record from the Hub folders under `hub_root` (the repository's hub_cards/)."""
    record = published_from_hub(hub_root)
    write_published(record, path)
    return record


def ranked_tags(record: Record) -> dict[str, list[str]]:
    """Each architecture's published tags, best first: that is the order timm's default follows.

    Best is the highest top-1 on the zoo's main dataset (the first of DATASET_CFGS); top-1 on
    different datasets do not compare, so other datasets follow in that order. Ties keep tag order.
    """
    ranked: dict[str, list[str]] = {}
    datasets = list(DATASET_CFGS)

    def rank(name):
        entry = record[name]
        return datasets.index(entry['dataset']), -entry['top1'], name

    for name in sorted(record, key=rank):
        model, tag = name.split('.', 1)
        ranked.setdefault(model, []).append(tag)
    return dict(sorted(ranked.items()))


PUBLISHED: Record = read_published()  # as shipped with the package
PUBLISHED_TAGS: dict[str, list[str]] = ranked_tags(PUBLISHED)


def published_tags(architecture: str) -> list[str]:
    """The architecture's published tags, its default first; empty when it has none."""
    return list(PUBLISHED_TAGS.get(architecture, ()))


def check_weights_request(architecture: str, tag: Optional[str] = None, pretrained: bool = True) -> None:
    """Raise a WeightsError that names what is published, unless `architecture.tag` is registered and, with
    `pretrained`, has weights (tag None: the architecture's default)."""
    tags = published_tags(architecture)
    if tags and tag in (None, *tags):
        return
    if not tags and not pretrained and tag in (None, UNTRAINED_TAG):
        return
    if not tags:
        raise WeightsError(
            f'{f"{architecture}.{tag}: " if tag else ""}{architecture} has no published weights (pretrained=False '
            f'builds it untrained); architectures with weights: {", ".join(PUBLISHED_TAGS)}')
    raise WeightsError(f'{architecture}.{tag}: no such published weights; {architecture} has {", ".join(tags)} '
                       '(the first is its default)')
