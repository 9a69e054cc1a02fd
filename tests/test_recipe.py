"""The recipe choices beyond optimizer settings: classifier init, zero-initialised residual branches, decay groups."""
import json

import pytest
import timm
import torch
from accelerate.utils import load as load_weights_only

import xsep_zoo  # noqa: F401  (registers the family)
from xsep_zoo.recipe import NORMAL_HEAD_STD, init_classifier, param_groups, zero_init_last_bn

from conftest import TRAIN_ARGS, run_script


def _model(name='mobilenetv3_small_xsep_050'):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10)


def test_normal_head_init_leaves_the_body_and_the_global_stream_alone():
    model, reference = _model(), _model()
    state = torch.random.get_rng_state()
    init_classifier(model, 'normal', seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    weight = model.classifier.weight.detach()
    assert abs(float(weight.std()) - NORMAL_HEAD_STD) < 0.1 * NORMAL_HEAD_STD
    assert not model.classifier.bias.any()
    body = {k: v for k, v in model.state_dict().items() if not k.startswith('classifier')}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in body.items())
    init_classifier(reference, 'timm', seed=3)
    assert float(reference.classifier.weight.detach().std()) > 100 * NORMAL_HEAD_STD  # timm's uniform init, untouched


def test_unknown_head_init_is_named():
    with pytest.raises(ValueError, match='uniform'):
        init_classifier(_model(), 'uniform', seed=0)


def test_zero_init_last_bn_makes_every_residual_block_the_identity():
    model = _model('mobilenetv3_small_xsep_100').eval()
    changed = zero_init_last_bn(model)
    residual = [b for stage in model.blocks for b in stage if getattr(b, 'has_skip', False)]
    assert changed == len(residual) > 0
    x = torch.randn(2, residual[0].conv_pw.in_channels, 8, 8)
    assert torch.equal(residual[0](x), x)


def test_zero_init_last_bn_refuses_a_model_without_residual_blocks():
    with pytest.raises(ValueError, match='no residual'):
        zero_init_last_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)))


def test_param_groups_exempt_norm_and_bias_only_when_asked():
    model = _model()
    (every,) = param_groups(model, 6e-5, norm_bias_decay=True)
    assert len(every['params']) == len(list(model.parameters())) and every['weight_decay'] == 6e-5
    decay, no_decay = param_groups(model, 6e-5, norm_bias_decay=False)
    assert all(p.ndim > 1 for p in decay['params']) and all(p.ndim == 1 for p in no_decay['params'])
    assert no_decay['weight_decay'] == 0.0
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))


def test_train_records_and_applies_the_recipe_choices(tmp_path, script_env, cifar10_dir):
    run_dir = tmp_path / 'remedy'
    run_script('train.py', *TRAIN_ARGS, '--epochs', '1', '--train-limit', '256', '--test-limit', '64',
               '--head-init', 'normal', '--zero-init-last', '--no-norm-bias-decay', '--data-source', cifar10_dir,
               '--output-dir', run_dir, env=script_env)
    config = json.loads((run_dir / 'config.json').read_text())['config']
    assert (config['recipe'], config['head_init'], config['zero_init_last'], config['norm_bias_decay']) == \
        ('head_init=normal zero_init_last=True norm_bias_decay=False', 'normal', True, False)
    optimizer = load_weights_only(run_dir / 'checkpoints' / 'epoch-0001' / 'optimizer.bin')
    assert [g['weight_decay'] for g in optimizer['param_groups']] == [config['weight_decay'], 0.0]


def test_a_run_is_named_by_its_choices_whichever_flags_made_them():
    from xsep_zoo.recipe import RECIPES, recipe_name
    assert recipe_name({}) == 'paper'  # a record from before the choices existed
    assert recipe_name(dict(zero_init_last=True)) == 'zero-init-last' and 'zero-init-last' in RECIPES
    assert recipe_name(dict(zero_init_last=True, head_init='normal')) == 'head_init=normal zero_init_last=True'
