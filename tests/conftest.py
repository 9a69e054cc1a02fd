"""Shared test fixtures: the shared CIFAR-10 copy, offline script runs, one short training run and its export."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_hub import fake_hub, fake_hub_root  # noqa: F401  (pytest fixtures, see tests/fake_hub.py)

ROOT = Path(__file__).resolve().parents[1]
# The real CIFAR-10 (JPEG copy, Hub parquet layout) next to the repository; XSEP_ZOO_CIFAR10 may point elsewhere.
MODEL = 'mobilenetv3_small_xsep_050'  # the smallest of the family keeps the training tests quick
TRAIN_ARGS = [
    '--model', MODEL, '--dataset', 'cifar10', '--train-limit', '512', '--test-limit', '256',
    '--epochs', '2', '--warmup-epochs', '0', '--lr', '0.1', '--batch-size', '64', '--seed', '3',
]
CIFAR10_DIR = Path(os.environ.get('XSEP_ZOO_CIFAR10', ROOT.parent / 'shared' / 'datasets' / 'cifar10'))


@pytest.fixture(scope='session')
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / 'README.md').is_file():
        pytest.fail(f'the shared CIFAR-10 copy is missing at {CIFAR10_DIR}; set XSEP_ZOO_CIFAR10 to its folder')
    return CIFAR10_DIR


@pytest.fixture(scope='session')
def script_env(tmp_path_factory) -> dict:
    """Environment for running scripts: offline, with a private empty HF cache."""
    home = tmp_path_factory.mktemp('hf_home')
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1',
               XSEP_ZOO_HUB_DIR=str(tmp_path_factory.mktemp('empty_hub_root')))
    env.pop('HF_ENDPOINT', None)
    return env


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
