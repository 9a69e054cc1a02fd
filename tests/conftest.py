"""Shared test fixtures: a small CIFAR-10 the tests make, offline script runs, one short training run and its export.

The pipeline tests (training, resuming, export, loading) run on a small synthetic copy of CIFAR-10 in
the Hub's parquet layout, made here, so they pass on any machine. The tests that re-evaluate the
published cards need the CIFAR-10 copy the cards were measured on: point XSEP_ZOO_CIFAR10 at it
(a folder in the Hub layout). Without it they skip, unless XSEP_ZOO_REQUIRE_DATA=1 makes them fail.
"""
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_hub import fake_hub, fake_hub_root  # noqa: F401  (pytest fixtures, see tests/fake_hub.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))  # scripts import their sibling helpers, as when run directly
MODEL = 'mobilenetv3_small_xsep_050'  # the smallest of the family keeps the training tests quick
TRAIN_ARGS = [
    '--model', MODEL, '--dataset', 'cifar10', '--train-limit', '512', '--test-limit', '256',
    '--epochs', '2', '--warmup-epochs', '0', '--lr', '0.1', '--batch-size', '64', '--seed', '3',
]
SMALL_CIFAR10_SIZES = {'train': 1024, 'test': 512}


def write_small_cifar10(folder: Path, sizes=SMALL_CIFAR10_SIZES, seed: int = 0) -> Path:
    """A CIFAR-10 stand-in in the Hub layout: 32x32 JPEGs whose class shows in their colours, so a model learns."""
    import datasets
    import PIL.Image
    from xsep_zoo.constants import CIFAR10_LABELS

    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, (len(CIFAR10_LABELS), 3))
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=list(CIFAR10_LABELS))})
    (folder / 'plain_text').mkdir(parents=True)
    for split, size in sizes.items():
        labels = np.arange(size) % len(CIFAR10_LABELS)
        images = []
        for label in labels:
            pixels = palette[label] + rng.normal(0, 40, (32, 32, 3))
            buffer = io.BytesIO()
            PIL.Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format='JPEG', quality=75)
            images.append({'bytes': buffer.getvalue(), 'path': None})
        datasets.Dataset.from_dict({'img': images, 'label': labels.tolist()}, features=features).to_parquet(
            str(folder / 'plain_text' / f'{split}-00000-of-00001.parquet'))
    (folder / 'README.md').write_text(
        '---\npretty_name: CIFAR-10 stand-in for tests (synthetic JPEG images)\nconfigs:\n- config_name: plain_text\n'
        '  data_files:\n' + ''.join(f'  - split: {s}\n    path: plain_text/{s}-*.parquet\n' for s in sizes) + '---\n')
    return folder


def pytest_configure(config):
    """Under pytest-xdist, each test process computes with its share of the cores, not all of them."""
    workers = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if workers:
        import torch
        from xsep_zoo.engine import available_cores
        torch.set_num_threads(max(1, available_cores() // int(workers)))


@pytest.fixture(scope='session')
def cifar10_dir(tmp_path_factory) -> Path:
    """The small CIFAR-10 the pipeline tests train and evaluate on."""
    return write_small_cifar10(tmp_path_factory.mktemp('data') / 'cifar10')


@pytest.fixture(scope='session')
def real_cifar10() -> Path:
    """The CIFAR-10 copy the published cards were measured on, from XSEP_ZOO_CIFAR10."""
    folder = os.environ.get('XSEP_ZOO_CIFAR10')
    if folder and (Path(folder) / 'README.md').is_file():
        return Path(folder)
    reason = (f'XSEP_ZOO_CIFAR10={folder!r} holds no dataset (README.md)' if folder else 'XSEP_ZOO_CIFAR10 is not set')
    reason += ('; set it to the CIFAR-10 copy the cards were measured on (a folder in the Hub layout) to '
               're-evaluate them')
    if os.environ.get('XSEP_ZOO_REQUIRE_DATA') == '1':
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope='session')
def script_env(tmp_path_factory) -> dict:
    """Environment for running scripts: offline, with a private empty HF cache."""
    home = tmp_path_factory.mktemp('hf_home')
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               XSEP_ZOO_HUB_DIR=str(tmp_path_factory.mktemp('empty_hub_root')))
    env.pop('HF_ENDPOINT', None)
    return env


def randomize_bn(module, seed: int = 1) -> None:
    """BatchNorm statistics and affine parameters far from their init, so that folding them is tested."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def load_script(name: str):
    """A script of scripts/ as a module, to test its functions without a subprocess."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, *args, env, check=True, **kwargs):
    result = subprocess.run([sys.executable, str(ROOT / 'scripts' / name), *map(str, args)], env=env,
                            capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f'{name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return result


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, script_env, cifar10_dir):
    run_dir = tmp_path_factory.mktemp('runs') / 'uninterrupted'
    run_script('train.py', *TRAIN_ARGS, '--data-source', cifar10_dir, '--output-dir', run_dir, env=script_env)
    return run_dir


@pytest.fixture(scope='session')
def exported(trained_run, tmp_path_factory, script_env, cifar10_dir):
    hub_root = tmp_path_factory.mktemp('hub')
    run_script('export.py', trained_run, '--hub-root', hub_root, '--data-source', cifar10_dir, '--test-limit', '256',
               env=script_env)
    return hub_root / f'{MODEL}.cifar10'
