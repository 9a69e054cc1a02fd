"""The registry: the family table, and pretrained tags built from the record of what is published."""
import json
import re
from pathlib import Path

import pytest
import timm
from timm.models import get_arch_name, get_pretrained_cfg, is_model_in_modules

import xsep_zoo
from conftest import ROOT
from xsep_zoo import ARCH_VARIANTS, MODELS
from xsep_zoo import mobilenetv3_xsep, pretrained
from xsep_zoo.hub import WeightsError
from xsep_zoo.pretrained import (PUBLISHED, PUBLISHED_PATH, published_from_hub, published_tags, ranked_tags,
                                 read_published, rebuild_published, record_published, write_published)

HUB_CARDS = ROOT / 'hub_cards'
MODULE = 'mobilenetv3_xsep'  # timm files the family under its module's name
WITH_WEIGHTS = sorted({get_arch_name(name) for name in PUBLISHED})


def test_family_table_names_each_model_its_variant_and_partner():
    assert xsep_zoo.MODEL_NAMES == tuple(MODELS) and len(MODELS) == 17
    assert set(timm.list_models(module=MODULE)) == set(MODELS) | {'mobilenetv3_small_xsep'}  # and the alias
    for name, model in MODELS.items():
        assert model.arch in ARCH_VARIANTS
        assert name == f'mobilenetv3_small_{model.arch}_{round(model.multiplier * 100):03d}'
        assert model.description.endswith('.') and model.paper
        if model.arch.startswith('xsep'):  # compared with a baseline of its width
            partner = MODELS[model.dw_partner]
            assert partner.dw_partner is None and partner.multiplier == model.multiplier
        else:
            assert model.dw_partner is None


def test_record_is_what_hub_cards_holds():
    folders = sorted(p.parent.name for p in HUB_CARDS.glob('*/config.json'))
    assert sorted(PUBLISHED) == folders
    for name, entry in PUBLISHED.items():
        results = json.loads((HUB_CARDS / name / 'xsep_zoo.json').read_text())
        assert entry == dict(dataset=results['dataset'], top1=results['top1'])
    assert set(WITH_WEIGHTS) <= set(MODELS)
    assert published_from_hub(HUB_CARDS) == read_published() == PUBLISHED


def test_rebuilding_the_record_writes_the_shipped_file(tmp_path):
    rebuild_published(HUB_CARDS, tmp_path / 'published.json')
    assert (tmp_path / 'published.json').read_text() == PUBLISHED_PATH.read_text()


def test_list_pretrained_is_exactly_the_published_tags():
    listed = timm.list_pretrained('mobilenetv3_small_*')
    assert sorted(n for n in listed if is_model_in_modules(n, MODULE)) == sorted(PUBLISHED)
    assert all(is_model_in_modules(n, 'mobilenetv3') for n in listed if not is_model_in_modules(n, MODULE))
    # the alias has no tags of its own: it builds mobilenetv3_small_xsep_100, with that model's weights
    assert timm.list_pretrained('mobilenetv3_small_xsep') == []


def test_each_default_is_the_best_published():
    for arch in MODELS:
        cfg = get_pretrained_cfg(arch)
        top1 = {name.split('.', 1)[1]: e['top1'] for name, e in PUBLISHED.items() if get_arch_name(name) == arch}
        if top1:
            assert cfg.tag == max(top1, key=top1.get) and cfg.has_weights, arch
        else:
            assert cfg.tag == 'untrained' and not cfg.has_weights, arch
    for name in ('mobilenetv3_small_xsep', 'mobilenetv3_small_xsep_100', 'mobilenetv3_small_dw_100'):
        assert timm.create_model(name).pretrained_cfg['tag'] == 'cifar10_e400'


def test_ranking_is_top1_on_the_main_dataset_then_tag_order(monkeypatch):
    monkeypatch.setitem(pretrained.DATASET_CFGS, 'svhn', {})  # a second dataset, after CIFAR-10
    record = {'m.b': dict(dataset='cifar10', top1=80.0), 'm.a': dict(dataset='cifar10', top1=80.0),
              'm.c': dict(dataset='cifar10', top1=90.0), 'm.s': dict(dataset='svhn', top1=97.0),
              'n.x': dict(dataset='svhn', top1=1.0)}
    assert ranked_tags(record) == {'m': ['c', 'a', 'b', 's'], 'n': ['x']}


def test_every_published_tag_loads_by_name(monkeypatch):
    monkeypatch.delenv('XSEP_ZOO_HUB_DIR', raising=False)
    for name, folder in [('mobilenetv3_small_xsep', 'mobilenetv3_small_xsep_100.cifar10_e400'),
                         ('mobilenetv3_small_xsep_100.cifar10', 'mobilenetv3_small_xsep_100.cifar10'),
                         ('mobilenetv3_small_xsep.cifar10_seed1', 'mobilenetv3_small_xsep_100.cifar10_seed1')]:
        model = timm.create_model(name, pretrained=True)
        assert Path(model.pretrained_cfg['file']).parent == HUB_CARDS / folder


@pytest.fixture
def no_weights_looked_for(monkeypatch):
    def refuse(cfg):
        raise AssertionError(f'looked for weights of {cfg["architecture"]}.{cfg["tag"]}')
    monkeypatch.setattr(mobilenetv3_xsep, 'pretrained_weights_overlay', refuse)


UNPUBLISHED = ('mobilenetv3_small_xsep_125', 'mobilenetv3_small_dw_125')  # as if this pair were still training


def _without_unpublished(record):
    return {name: entry for name, entry in record.items() if get_arch_name(name) not in UNPUBLISHED}


@pytest.fixture
def pair_unpublished(monkeypatch):
    """The record as it was before the width-1.25 pair had weights; returns the architectures that have some."""
    tags = ranked_tags(_without_unpublished(PUBLISHED))
    monkeypatch.setattr(pretrained, 'PUBLISHED_TAGS', tags)
    return list(tags)


@pytest.mark.parametrize('name', ['mobilenetv3_small_xsep_125', 'mobilenetv3_small_dw_125.cifar10',
                                  'mobilenetv3_small_dw_125.untrained'])
def test_weights_never_published_are_an_error_naming_those_that_were(name, pair_unpublished, no_weights_looked_for):
    arch = get_arch_name(name)
    prefix = f'{name}: ' if '.' in name else ''
    expected = (f'{prefix}{arch} has no published weights (pretrained=False builds it untrained); '
                f'architectures with weights: {", ".join(pair_unpublished)}')
    assert arch in UNPUBLISHED and arch not in pair_unpublished and len(pair_unpublished) == len(MODELS) - 2
    with pytest.raises(WeightsError, match=f'^{re.escape(expected)}$'):
        timm.create_model(name, pretrained=True)


def test_an_architecture_without_weights_is_registered_untrained():
    cfgs = mobilenetv3_xsep.family_cfgs(_without_unpublished(PUBLISHED))
    for arch in UNPUBLISHED:
        assert [name for name in cfgs if get_arch_name(name) == arch] == [f'{arch}.untrained']
        assert 'hf_hub_id' not in cfgs[f'{arch}.untrained']
    registered = mobilenetv3_xsep.family_cfgs(PUBLISHED)  # what timm holds: every cfg, each under its name
    assert {get_arch_name(name) for name in registered} == set(MODELS)
    for name, cfg in registered.items():
        assert get_pretrained_cfg(name).to_dict() == {**get_pretrained_cfg(name).to_dict(), **cfg}, name


@pytest.mark.parametrize('name', ['mobilenetv3_small_xsep_100.nosuchtag', 'mobilenetv3_small_xsep.nosuchtag'])
@pytest.mark.parametrize('with_weights', [True, False])
def test_an_unknown_tag_is_an_error_naming_the_published_ones(name, with_weights, no_weights_looked_for):
    tags = published_tags('mobilenetv3_small_xsep_100')
    assert tags[0] == 'cifar10_e400' and {'cifar10', 'cifar10_seed1'} <= set(tags)
    expected = (f'mobilenetv3_small_xsep_100.nosuchtag: no such published weights; mobilenetv3_small_xsep_100 has '
                f'{", ".join(tags)} (the first is its default)')
    with pytest.raises(WeightsError, match=f'^{re.escape(expected)}$'):
        timm.create_model(name, pretrained=with_weights)


def _hub_folder(tmp_path, name, edit=lambda record: None):
    """A copy of a published folder's config.json and xsep_zoo.json (what the record reads), as `name`."""
    record = json.loads((HUB_CARDS / name / 'xsep_zoo.json').read_text())
    edit(record)
    folder = tmp_path / name
    folder.mkdir()
    (folder / 'config.json').write_text((HUB_CARDS / name / 'config.json').read_text())
    (folder / 'xsep_zoo.json').write_text(json.dumps(record))
    return folder


def test_record_published_adds_or_updates_one_entry(tmp_path):
    path = tmp_path / 'published.json'
    write_published({'mobilenetv3_small_dw_050.cifar10': dict(dataset='cifar10', top1=1.0)}, path)
    record_published(_hub_folder(tmp_path, 'mobilenetv3_small_xsep_100.cifar10_e400'), path)
    record_published(_hub_folder(tmp_path, 'mobilenetv3_small_dw_050.cifar10'), path)  # replaces the 1.0
    expected = {name: PUBLISHED[name] for name in ('mobilenetv3_small_dw_050.cifar10',
                                                   'mobilenetv3_small_xsep_100.cifar10_e400')}
    assert read_published(path) == expected
    assert path.read_text() == json.dumps(expected, indent=2, sort_keys=True) + '\n'


def test_record_published_refuses_a_misnamed_folder_or_an_unknown_dataset(tmp_path):
    path = tmp_path / 'published.json'
    write_published({}, path)
    misnamed = tmp_path / 'mobilenetv3_small_xsep_100.cifar10'
    misnamed.mkdir()
    (misnamed / 'config.json').write_text((HUB_CARDS / 'mobilenetv3_small_xsep_100.cifar10_e400' / 'config.json')
                                          .read_text())
    with pytest.raises(ValueError, match='its config.json is for mobilenetv3_small_xsep_100.cifar10_e400'):
        record_published(misnamed, path)
    other = _hub_folder(tmp_path, 'mobilenetv3_small_dw_050.cifar10',
                        lambda record: record.update(dataset='cifar100'))
    with pytest.raises(ValueError, match="dataset 'cifar100' has no pretrained cfg"):
        record_published(other, path)
    assert read_published(path) == {}
