"""The published zoo: every Hub folder in hub_cards/ reproduces its model card exactly, image by image.

A card's record keeps, for every test image, where the true class ranked (test_ranks). The tests check
that the card's top-1 and top-5 are those of the record, and evaluate again a part of the test set
drawn per folder, in whole batches of the card's own evaluation, so each image is computed as it was
for the card. `python scripts/reproduce.py --all` evaluates every folder on the whole test split.
"""
import json
import random
import shutil
from pathlib import Path

import pytest
import timm
import torch

from conftest import MODEL, ROOT, SMALL_CIFAR10_SIZES, load_script, run_script
from xsep_zoo.data import DATASETS, ImageTensors, load_test
from xsep_zoo.engine import evaluate_model, true_class_ranks
from xsep_zoo.hub import RANKS_KEY, RECORD_NAME, read_record

PUBLISHED = sorted(p.parent for p in (ROOT / 'hub_cards').glob('*/config.json'))
CARD_EVAL_BATCH = 256  # evaluate_model's batch size, with which export.py measured every card
CHECKED_BATCHES = 8  # of CIFAR-10's 40 test batches: a fifth of the test set, drawn for each folder


@pytest.fixture(scope='session')
def real_cifar10_test(real_cifar10):
    return load_test('cifar10', source=real_cifar10)


def batches_to_check(name: str, size: int) -> torch.Tensor:
    """Indices of CHECKED_BATCHES whole evaluation batches, drawn from the folder's name, in order."""
    starts = sorted(random.Random(name).sample(range(0, size, CARD_EVAL_BATCH), CHECKED_BATCHES))
    return torch.cat([torch.arange(start, min(start + CARD_EVAL_BATCH, size)) for start in starts])


@pytest.mark.parametrize('folder', PUBLISHED, ids=lambda p: p.name)
def test_published_model_matches_its_card(folder, real_cifar10_test, monkeypatch):
    monkeypatch.delenv('XSEP_ZOO_HUB_DIR', raising=False)
    card = read_record(folder)
    name = folder.name  # '<model>.<tag>': the registered tag must load exactly this folder
    assert name in timm.list_pretrained(), f'{name} is not a registered pretrained tag'
    model = timm.create_model(name, pretrained=True)
    assert Path(model.pretrained_cfg['file']).parent == folder
    dataset = card['dataset']
    test = real_cifar10_test if dataset == 'cifar10' else load_test(dataset)
    ranks = card.get(RANKS_KEY, '')
    assert ranks.isdigit() and len(ranks) == len(test) == card['count'], (
        f'{folder.name}: no per-image record of the whole test split; export.py --refresh <folder> '
        '--data-source <test data> measures it')
    assert 100.0 * ranks.count('0') / len(ranks) == card['top1']
    assert 100.0 * sum(rank < '5' for rank in ranks) / len(ranks) == card['top5']

    index = batches_to_check(name, len(test))
    part = ImageTensors(test.images[index], test.labels[index], test.classes)
    measured = evaluate_model(model, part, DATASETS[dataset], batch_size=CARD_EVAL_BATCH, per_image=True)['ranks']
    recorded = [int(ranks[i]) for i in index]
    differ = [(int(i), now, then) for i, now, then in zip(index, measured, recorded) if now != then]
    assert not differ, (f'{len(differ)} of {len(index)} test images rank their true class otherwise than the card '
                        f'records; (image, measured, card): {differ[:5]}')
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
    assert f'{name}: measured top-1 ' in result.stderr and f'on {SMALL_CIFAR10_SIZES["test"]} images, but its card says' in result.stderr


def test_true_class_ranks_count_top1_and_top5():
    logits = torch.tensor([[0., 9., 1., 2., 3., 4., 5.], [6., 5., 4., 3., 2., 1., 0.], [9., 8., 7., 6., 5., 4., 0.]])
    labels = torch.tensor([1, 4, 6])
    assert true_class_ranks(logits, labels).tolist() == [0, 4, 5]
    assert true_class_ranks(logits[:, :3], torch.tensor([0, 1, 2])).tolist() == [2, 1, 2]  # fewer than 5 classes


@pytest.fixture(scope='module')
def whole_split_export(trained_run, tmp_path_factory, script_env, cifar10_dir):
    """The short run exported with its card measured on the whole (small) test split."""
    hub_root = tmp_path_factory.mktemp('hub_whole_split')
    run_script('export.py', trained_run, '--hub-root', hub_root, '--data-source', cifar10_dir, env=script_env)
    return hub_root / f'{MODEL}.cifar10'


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_refresh_with_data_measures_a_missing_per_image_record_and_changes_nothing_else(
        whole_split_export, tmp_path, script_env, cifar10_dir):
    folder = tmp_path / whole_split_export.name
    shutil.copytree(whole_split_export, folder)
    record = read_record(folder)
    (folder / RECORD_NAME).write_text(json.dumps({k: v for k, v in record.items() if k != RANKS_KEY}, indent=2) + '\n')
    before = _files(folder)
    result = run_script('export.py', '--refresh', folder, '--data-source', cifar10_dir, env=script_env)
    assert 'measured again: top-1' in result.stdout
    assert read_record(folder) == record  # the same ranks, measured again; every other field as it was
    after = _files(folder)
    assert {name for name in after if after[name] != before.get(name)} == {RECORD_NAME}


@pytest.mark.parametrize('card, says', [
    ('measured_on_a_subset', f'on {SMALL_CIFAR10_SIZES["test"]} images, but its card says'),
    ('one_image_ranked_otherwise', f'1 of {SMALL_CIFAR10_SIZES["test"]} test images rank their true class otherwise'),
], ids=['measured_on_a_subset', 'one_image_ranked_otherwise'])
def test_refresh_with_data_refuses_a_card_its_measurement_does_not_match(
        card, says, exported, whole_split_export, tmp_path, script_env, cifar10_dir):
    folder = tmp_path / exported.name
    shutil.copytree(exported if card == 'measured_on_a_subset' else whole_split_export, folder)
    if card == 'one_image_ranked_otherwise':
        record = read_record(folder)
        ranks = record[RANKS_KEY]
        i = next(i for i, rank in enumerate(ranks) if rank in '1234')  # in the top 5, not first: top-1 and top-5 hold
        record[RANKS_KEY] = ranks[:i] + ('2' if ranks[i] == '1' else '1') + ranks[i + 1:]
        (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + '\n')
    before = _files(folder)
    result = run_script('export.py', '--refresh', folder, '--data-source', cifar10_dir, env=script_env, check=False)
    assert result.returncode == 1 and 'nothing was rewritten' in result.stderr and says in result.stderr, result.stderr
    assert _files(folder) == before


def test_reproduce_all_takes_no_names():
    with pytest.raises(SystemExit):
        load_script('reproduce').main(['--all', 'mobilenetv3_small_dw_100'])
