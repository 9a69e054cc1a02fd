"""The published zoo: every Hub folder in hub_cards/ reproduces its model card exactly."""
from pathlib import Path

import pytest
import timm

from conftest import ROOT, SMALL_CIFAR10_SIZES, run_script
from xsep_zoo.data import DATASETS, load_test
from xsep_zoo.engine import evaluate_model
from xsep_zoo.hub import read_record

PUBLISHED = sorted(p.parent for p in (ROOT / 'hub_cards').glob('*/config.json'))


@pytest.mark.parametrize('folder', PUBLISHED, ids=lambda p: p.name)
def test_published_model_matches_its_card(folder, real_cifar10, monkeypatch):
    monkeypatch.delenv('XSEP_ZOO_HUB_DIR', raising=False)
    card = read_record(folder)
    name = folder.name  # '<model>.<tag>': the registered tag must load exactly this folder
    assert name in timm.list_pretrained(), f'{name} is not a registered pretrained tag'
    model = timm.create_model(name, pretrained=True)
    assert Path(model.pretrained_cfg['file']).parent == folder
    dataset = card['dataset']
    test = load_test(dataset, source=real_cifar10 if dataset == 'cifar10' else None)
    measured = evaluate_model(model, test, DATASETS[dataset])
    assert measured['count'] == len(test) == card['count']
    assert (measured['top1'], measured['top5']) == (card['top1'], card['top5'])
    readme = (folder / 'README.md').read_text()
    assert f'| {card["top1"]:.2f} | {card["top5"]:.2f} | {card["loss"]:.4f} | {card["count"]} |' in readme


def test_reproduce_reports_a_card_it_does_not_match(exported, script_env, cifar10_dir):
    # the test export was measured on 256 images, so the whole (small) test split cannot reproduce it
    env = dict(script_env, XSEP_ZOO_HUB_DIR=str(exported.parent))
    name = exported.name
    result = run_script('reproduce.py', name, '--data-source', cifar10_dir, env=env, check=False)
    assert result.returncode == 1, result.stderr
    assert f'| `{name}` | cifar10 ({cifar10_dir}) |' in result.stdout
    assert f'| {SMALL_CIFAR10_SIZES["test"]} | NO |' in result.stdout
    assert 'differs from its model card' in result.stderr
