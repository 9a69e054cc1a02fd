"""Pretrained weights: the zoo's Hub repos, local copies of them, and loading that never guesses.

A Hub repo of the zoo is a folder `<model>.<tag>/` holding what timm's `push_to_hf_hub` publishes
(`model.safetensors`, `config.json` in timm's layout, the model card `README.md`) and the zoo's own
record beside them, `xsep_zoo.json`: the sha256 of the weights, the config fields that define the
network as they were at export, and how the weights were made and measured. The repository keeps
these folders in `hub_cards/`; `timm.create_model(name, pretrained=True)` reads the local folder when
there is one and the Hub otherwise, and in both cases refuses weights whose sha256 differs from the
one recorded, and a config.json whose architecture fields differ from the recorded ones (timm would
build another network around the weights, or drop their classifier), rather than loading something else.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    'HUB_DIR_ENV', 'UNVERIFIED_ENV', 'WEIGHTS_NAME', 'CONFIG_NAME', 'CARD_NAME', 'RECORD_NAME', 'WeightsError',
    'local_hub_root', 'local_repo_dir', 'sha256_file', 'read_hub_config', 'read_record', 'hub_config',
    'verified_weights', 'load_weights_file', 'save_weights_file', 'load_weights_into', 'find_weights',
    'pretrained_weights_overlay', 'load_matching_state_dict',
    'write_hub_folder', 'RANKS_KEY', 'ranks_text', 'card_mismatch',
]

HUB_DIR_ENV = 'XSEP_ZOO_HUB_DIR'  # another local root of Hub folders, instead of the repository's hub_cards/
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
RECORD_NAME = 'xsep_zoo.json'  # the zoo's record of a Hub folder, beside timm's files
SHA256_KEY = 'weights_sha256'
# Per test image, in the split's order, where the true class stood among the logits (engine.true_class_ranks):
# one digit, 0-4 within the top 5, 5 outside. Any part of the test set can be checked against it image by image.
RANKS_KEY = 'test_ranks'
# What timm builds the network from; recorded at export under EXPORTED_KEY, so an edit is caught before loading.
ARCHITECTURE_FIELDS = ('architecture', 'num_classes', 'num_features', 'global_pool', 'model_args')
EXPORTED_KEY = 'exported_config'
# model_args timm writes that leave the network as the registry builds it: only the others belong in config.json
# (transformers' timm wrapper passes num_classes itself and refuses a config that repeats it)
NEUTRAL_MODEL_ARGS = {'in_chans': 3, 'global_pool': 'avg'}
# set to 1 to load a Hub folder of one's own that records no checksum (say, saved by timm's save_for_hf)
UNVERIFIED_ENV = 'XSEP_ZOO_ALLOW_UNVERIFIED'


class WeightsError(RuntimeError):
    """Weights that must not be loaded: missing, unreadable, altered, or for another network."""


def local_hub_root() -> Optional[Path]:
    env = os.environ.get(HUB_DIR_ENV)
    if env:
        return Path(env)
    default = Path(__file__).resolve().parents[1] / 'hub_cards'
    return default if default.is_dir() else None


def local_repo_dir(hf_hub_id: str) -> Optional[Path]:
    """The local folder of Hub repo `org/<model>.<tag>` (named `<model>.<tag>`), if there is one."""
    root = local_hub_root()
    if root is None:
        return None
    folder = root / hf_hub_id.split('@')[0].split('/')[-1]
    return folder if folder.is_dir() else None


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise WeightsError(f'{path}: not found; a Hub folder of the zoo holds {what}')
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f'{path}: not valid JSON ({e}); restore the file, e.g. download it again') from None
    if not isinstance(data, dict):
        raise WeightsError(f'{path}: expected a JSON object, found {type(data).__name__}')
    return data


def read_hub_config(config_path: Path) -> dict:
    """A Hub folder's config.json as a dict, or a WeightsError that names the file and what is wrong with it."""
    return _read_json(Path(config_path), f'{CONFIG_NAME} beside {WEIGHTS_NAME}')


def read_record(folder: Union[str, Path]) -> dict:
    """The zoo's record of a Hub folder (xsep_zoo.json): checksum, exported architecture, results, recipe."""
    return _read_json(Path(folder) / RECORD_NAME, f'{RECORD_NAME}, its checksum and results')


def ranks_text(ranks) -> str:
    """Per-image ranks (0-5) as the record keeps them: a string of one digit per test image."""
    return ''.join(map(str, ranks))


def card_mismatch(record: dict, metrics: dict) -> Optional[str]:
    """How a measurement on the card's own test files differs from its record, or None where it holds:
    top-1, top-5 and the image count, then, where the record keeps them, each image's rank of its class."""
    if any(metrics[k] != record[k] for k in ('top1', 'top5', 'count')):
        return (f'measured top-1 {metrics["top1"]:.2f}, top-5 {metrics["top5"]:.2f} on {metrics["count"]} images, '
                f'but its card says {record["top1"]:.2f}, {record["top5"]:.2f} on {record["count"]}')
    ranks = ranks_text(metrics['ranks'])
    differ = sum(now != then for now, then in zip(ranks, record.get(RANKS_KEY, ranks)))
    if differ:
        return f'{differ} of {len(ranks)} test images rank their true class otherwise than its record ({RANKS_KEY}) says'
    return None


def hub_config(model: nn.Module) -> dict:
    """config.json in timm's layout for `model`: class names at the top level, and in model_args only what
    changes the network (timm 1.0.31 also writes num_classes there, which transformers refuses)."""
    from timm.models._hub import save_config_for_hf
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, f'{tmp}/{CONFIG_NAME}')
        config = json.loads(Path(tmp, CONFIG_NAME).read_text())
    args = {k: v for k, v in config.pop('model_args', {}).items()
            if k != 'num_classes' and NEUTRAL_MODEL_ARGS.get(k, object()) != v}
    if args:
        config['model_args'] = args
    labels = config['pretrained_cfg'].pop('label_names', None)
    if labels is not None:
        config['label_names'] = list(labels)
    return config


def exported_config(config: Mapping[str, Any]) -> dict:
    """The fields of a timm config.json that decide which network its weights go into."""
    return {field: config.get(field) for field in ARCHITECTURE_FIELDS}


def _unverified_allowed(allow_unverified: Optional[bool]) -> bool:
    return allow_unverified if allow_unverified is not None else os.environ.get(UNVERIFIED_ENV, '') == '1'


def verified_weights(config_path: Path, weights_path: Path, allow_unverified: Optional[bool] = None) -> Path:
    """`weights_path`, once its sha256 and the config's architecture fields match what the folder's record holds.

    The record is xsep_zoo.json beside config.json. A folder without one is refused unless
    `allow_unverified` (default: the XSEP_ZOO_ALLOW_UNVERIFIED environment variable set to 1) says it
    is the user's own.
    """
    config_path = Path(config_path)
    config = read_hub_config(config_path)
    if not weights_path.is_file():
        raise WeightsError(f'{weights_path}: weights file not found')
    record_path = config_path.with_name(RECORD_NAME)
    if not record_path.is_file():
        if _unverified_allowed(allow_unverified):
            return weights_path
        raise WeightsError(
            f'{config_path.parent}: holds no {RECORD_NAME}, so nothing vouches for {weights_path.name} beside it '
            f'(the zoo\'s folders hold one); to load a folder of your own anyway, set {UNVERIFIED_ENV}=1')
    record = read_record(config_path.parent)
    expected = record.get(SHA256_KEY)
    actual = sha256_file(weights_path)
    if actual != expected:
        raise WeightsError(
            f'{weights_path}: sha256 {actual} differs from {expected} recorded in {record_path}; '
            'the file is truncated, corrupt or replaced, refusing to load it')
    recorded = record.get(EXPORTED_KEY)
    if not isinstance(recorded, dict):
        raise WeightsError(f'{record_path}: records no {EXPORTED_KEY}, the architecture the weights were exported '
                           'for; restore the file, e.g. download it again')
    for field, value in exported_config(config).items():
        if value != recorded.get(field):
            raise WeightsError(
                f'{config_path}: {field} is {value!r}, but the weights were exported for {recorded.get(field)!r}; '
                'the file was edited or damaged: restore it (e.g. download it again) rather than load the weights '
                'into another network')
    return weights_path


def load_weights_file(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a safetensors file, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'{path}: weights file not found')
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f'{path}: not a readable safetensors file ({e})') from e


def save_weights_file(state_dict: Mapping[str, torch.Tensor], path: Union[str, Path]) -> None:
    """Write weights as safetensors (plain contiguous CPU tensors), replacing `path` only once complete."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp, metadata={'format': 'pt'})
    os.replace(tmp, path)


def load_weights_into(model: nn.Module, path: Union[str, Path], new_head_ok: bool = False) -> tuple[Path, list[str]]:
    """Find the weights behind `path` (see find_weights) and load them into `model` if they fit it.

    Returns the weights file and the keys left at init (a new head, with `new_head_ok`).
    """
    weights = find_weights(path)
    return weights, load_matching_state_dict(model, load_weights_file(weights), str(weights), new_head_ok)


def find_weights(path: Union[str, Path], allow_unverified: Optional[bool] = None) -> Path:
    """The weights behind `path`: a .safetensors file, a Hub folder (checked), a run or checkpoint folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise WeightsError(f'{path}: no such file or folder')
    if (path / WEIGHTS_NAME).is_file():
        config = path / CONFIG_NAME
        if config.is_file() and 'config' not in read_hub_config(config):  # not a training run's record: a Hub folder
            return verified_weights(config, path / WEIGHTS_NAME, allow_unverified)
        return path / WEIGHTS_NAME
    latest = path / 'checkpoints' / 'latest.json'
    if latest.is_file():  # a training run still in progress: its last complete checkpoint
        return path / 'checkpoints' / json.loads(latest.read_text())['checkpoint'] / WEIGHTS_NAME
    raise WeightsError(
        f'{path}: found neither {WEIGHTS_NAME} nor checkpoints/latest.json; expected a .safetensors file, '
        'a Hub folder, a training run or one of its checkpoints')


def _download(hf_hub_id: str, filename: str) -> Path:
    """One file of a Hub repo, through huggingface_hub's cache; a WeightsError naming where it was looked for."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    repo_id, _, revision = hf_hub_id.partition('@')
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        root = local_hub_root()
        local = f'no local folder {root / repo_id.split("/")[-1]}' if root else 'no local Hub folders'
        reason = type(e).__name__ + (f': {str(e).strip().splitlines()[0]}' if str(e).strip() else '')
        raise WeightsError(f'{hf_hub_id}: {local}, and {filename} could not be fetched from the Hub ({reason})') from None


def pretrained_weights_overlay(pretrained_cfg: Mapping[str, Any]) -> Optional[dict]:
    """A `pretrained_cfg_overlay` that makes timm load checked weights of the zoo, or None to leave timm be.

    A `local-dir:` folder, the local copy of the cfg's Hub repo, or else the Hub repo itself, with
    its config.json, downloaded through huggingface_hub's cache. Explicit `file`, `state_dict` or
    `url` sources are the caller's choice and are left to timm.
    """
    source = pretrained_cfg.get('source')
    if source == 'local-dir':
        folder = Path(pretrained_cfg['file'])
        config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    elif source in (None, '', 'timm', 'hf-hub') and not any(pretrained_cfg.get(k) for k in ('file', 'state_dict')):
        hf_hub_id = pretrained_cfg.get('hf_hub_id')
        if not hf_hub_id:
            return None
        folder = local_repo_dir(hf_hub_id) if source != 'hf-hub' else None
        if folder is not None:
            config, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        else:
            config, weights = _download(hf_hub_id, CONFIG_NAME), _download(hf_hub_id, WEIGHTS_NAME)
            try:  # into the same snapshot folder as config.json, where verified_weights looks for it
                _download(hf_hub_id, RECORD_NAME)
            except WeightsError:
                if not _unverified_allowed(None):
                    raise
    else:
        return None
    verified_weights(config, weights)
    built, recorded = pretrained_cfg.get('architecture'), read_hub_config(config).get('architecture')
    if built and recorded != built:
        raise WeightsError(f'{config}: architecture is {recorded!r}, but these weights were asked for as {built!r}')
    return dict(source='file', file=str(weights))


def load_matching_state_dict(
        model: nn.Module,
        state_dict: Mapping[str, torch.Tensor],
        origin: str,
        new_head_ok: bool = False,
) -> list[str]:
    """Load `state_dict` into `model` if it is the same architecture; returns the keys left at init.

    With `new_head_ok`, a classifier of another size is skipped (fine-tuning to other classes);
    any other difference is an error that names `origin` and the first mismatching keys.
    """
    own = model.state_dict()
    head = model.pretrained_cfg.get('classifier', 'classifier')
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    head_keys = {k for k in own if k.startswith(head + '.')}
    skipped = []
    if new_head_ok and mismatched and set(mismatched) <= head_keys:
        skipped, mismatched = mismatched, []
    if missing or unexpected or mismatched:
        parts = [f'{what}: {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""} ({len(keys)})'
                 for what, keys in (('missing', missing), ('unexpected', unexpected), ('other shape', mismatched))
                 if keys]
        raise WeightsError(
            f'{origin} does not fit {type(model).__name__} {model.pretrained_cfg.get("architecture")!r} '
            f'({"; ".join(parts)}): it is a checkpoint of another architecture or width')
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in skipped}, strict=not skipped)
    return skipped


def write_hub_folder(
        folder: Path,
        model: nn.Module,
        weights: Union[Path, Mapping[str, torch.Tensor]],
        card: str,
        record: Optional[dict] = None,
        files: Optional[Mapping[str, Union[str, bytes]]] = None,
        overwrite: bool = False,
) -> Path:
    """Write a Hub repo folder (weights, timm's config.json, card, the zoo's record, other `files`), all or nothing.

    `weights` is a state dict, or a safetensors file copied as it is (a refreshed folder keeps its bytes).
    The record gains the weights' sha256 and the config's architecture fields. Everything is written
    to a temporary sibling first and moved into place at the end, so an interrupted export leaves no
    half folder; an existing folder is replaced only with `overwrite`.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f'{folder} exists; pass --overwrite to replace it')
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    try:
        if isinstance(weights, Path):
            shutil.copyfile(weights, tmp / WEIGHTS_NAME)
        else:
            save_weights_file(weights, tmp / WEIGHTS_NAME)
        config = hub_config(model)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + '\n')
        record = {SHA256_KEY: sha256_file(tmp / WEIGHTS_NAME), EXPORTED_KEY: exported_config(config), **(record or {})}
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + '\n')
        (tmp / CARD_NAME).write_text(card)
        for name, content in (files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and save_file create them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        if folder.exists():
            old = folder.with_name(f'.{folder.name}.old')
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old)
        else:
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
