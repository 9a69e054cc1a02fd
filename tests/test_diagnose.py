"""scripts/diagnose.py: the Hessian Lanczos iteration against a brute-force spectrum, per-stage gradient norms,
BatchNorm collapse counts, the verdicts' thresholds, and one tiny end-to-end run (JSON and page)."""
import json
import math
import os
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import xsep_zoo  # noqa: F401  (registers the models)

from conftest import ROOT, load_script as _load_script, run_script


diagnose = _load_script('diagnose')
STAGES = ['stem', *(f'blocks.{i}' for i in range(6)), 'head', 'classifier']


class TinyNet(nn.Module):
    """A network small enough for its full Hessian, named like MobileNetV3 so that `measure` takes it as it is."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.blocks = nn.Sequential(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.Hardswish()))
        self.conv_head = nn.Conv2d(3, 4, 1)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        x = x * F.hardsigmoid(x.mean((2, 3), keepdim=True))  # a squeeze-excite gate, as in the family
        return self.classifier(self.conv_head(x).mean((2, 3)))


def _brute_force_spectrum(model, inputs, labels):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (inputs,)), labels)

    with diagnose.TwiceDifferentiable():
        hessian = torch.autograd.functional.hessian(loss, flat)
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2)


def test_lanczos_finds_the_brute_force_top_eigenvalue():
    torch.manual_seed(0)
    model = TinyNet().double().train()
    inputs = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    spectrum = _brute_force_spectrum(model, inputs, labels)
    assert spectrum.numel() == sum(p.numel() for p in model.parameters()) > 50
    result = diagnose.measure(model, inputs, labels, hessian_iters=500, hessian_tol=1e-12, seed=0)['hessian']
    assert result['eigenvalue'] == pytest.approx(float(spectrum[-1]), rel=1e-6)
    assert float(spectrum[0]) - 1e-9 <= result['smallest'] < 0  # a Ritz value: inside the spectrum
    assert result['last_change'] < 1e-8 and result['iterations'] <= spectrum.numel()
    assert len(result['history']) == result['iterations']


def test_lanczos_finds_the_top_when_a_negative_eigenvalue_dominates():
    torch.manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([-5.0, 3.0, 1.0, 0.5, -1.0, 0.1], dtype=torch.float64)) @ q.T
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(0.5 * theta @ a @ theta, [theta], create_graph=True)
    result = diagnose.top_hessian_eigenvalue(grads, [theta], iters=400, tol=1e-13, seed=0)
    assert result['smallest'] == pytest.approx(-5.0, rel=1e-6)
    assert result['eigenvalue'] == pytest.approx(3.0, rel=1e-6)
    assert result['iterations'] <= 6  # the space is exhausted after its dimension
    few = diagnose.top_hessian_eigenvalue(grads, [theta], iters=2, tol=0.0, seed=0)
    assert few['iterations'] == 2 and few['last_change'] > 1e-6  # a short run reports that it has not converged


def test_stage_norms_sum_in_squares_and_match_plain_autograd():
    torch.manual_seed(0)
    model = timm.create_model('mobilenetv3_small_dw_050', num_classes=10, drop_rate=0.2).train()
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    norms = diagnose.measure(model, inputs, labels, hessian_iters=0, hessian_tol=0.0, seed=3)['grad_norms']
    assert list(norms) == [*STAGES, 'body', 'total']
    assert sum(norms[s] ** 2 for s in STAGES) == pytest.approx(norms['total'] ** 2, rel=1e-9)
    assert norms['body'] ** 2 == pytest.approx(norms['total'] ** 2 - norms['classifier'] ** 2, rel=1e-9)
    # the model, its BatchNorm statistics and the global random stream are as they were
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    # the same numbers as plain autograd on the model as it is, with the same dropout mask
    torch.manual_seed(3)
    loss = F.cross_entropy(model(inputs), labels)
    plain = diagnose.stage_norms(list(zip([n for n, _ in model.named_parameters()],
                                          torch.autograd.grad(loss, list(model.parameters())))))
    for key, value in plain.items():
        assert norms[key] == pytest.approx(value, rel=1e-4), key
    with pytest.raises(ValueError, match="'extra.weight' is in no stage"):
        diagnose.stage_of('extra.weight')


def _hub_folder(root: Path, name: str, epochs: int, state: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    save_file(state, str(folder / 'model.safetensors'))
    (folder / 'xsep_zoo.json').write_text(json.dumps(dict(
        model=name.partition('.')[0], epochs=epochs, recipe=dict(epochs=epochs, seed=0))))
    return folder


def _bn(scales):
    scales = torch.tensor(scales, dtype=torch.float32)
    return dict(weight=scales, bias=torch.zeros_like(scales), running_mean=torch.zeros_like(scales),
                running_var=torch.ones_like(scales))


def _state(**layers):
    return {f'{layer.replace("__", ".")}.{k}': v for layer, scales in layers.items() for k, v in _bn(scales).items()}


def test_bn_collapse_counts_scales_and_layers(tmp_path):
    state = _state(bn1=[1.0] * 8, blocks__0__0__bn1=[0.0, 0.0, 5e-4, -5e-4], blocks__1__0__bn2=[0.0, 2e-3, 0.5, -1e-4])
    state['blocks.0.0.conv_dw.weight'] = torch.zeros(4, 1, 3, 3)  # no BatchNorm: not counted
    state['classifier.weight'] = torch.zeros(10, 4)
    result = diagnose.bn_collapse(_hub_folder(tmp_path, 'mobilenetv3_small_dw_100.cifar10_e400', 400, state))
    assert (result['bn_scales'], result['collapsed']) == (16, 6)
    assert result['fraction'] == pytest.approx(6 / 16)
    assert result['layers_all_collapsed'] == ['blocks.0.0.bn1']
    assert result['layers_mostly_collapsed'] == {'blocks.0.0.bn1': 1.0, 'blocks.1.0.bn2': 0.5}
    assert result['per_stage'] == {'stem': 0.0, 'blocks.0': 1.0, 'blocks.1': 0.5}
    assert (result['epochs'], result['model']) == (400, 'mobilenetv3_small_dw_100')


# --- the verdicts come from the numbers ---------------------------------------------------------------------------

def _results(block0: dict, eigen: dict, body_normal: float = 0.01, long_fraction: float = 0.4,
             short_collapsed: int = 0, losses=(2.3,) * 60) -> dict:
    """A saved run with these gradient norms at blocks.0 and top eigenvalues (per model, same for both seeds)."""
    models = list(block0)
    measurements = []
    for seed in (0, 1):
        for m in models:
            grads = {s: 1.0 for s in STAGES}
            grads[diagnose.FIRST_BLOCKS] = block0[m] * (1 + 0.01 * seed)
            grads.update(body=2.0, total=2.2)
            hessian = dict(eigenvalue=eigen[m], last_change=1e-6, iterations=8, history=[eigen[m]])
            head = dict(weight_std=0.18, weight_max_abs=0.316, fan_in=1024, fan_out=10)
            measurements.append(dict(model=m, seed=seed, head_init='timm', when='init', loss=2.4, head=head,
                                     grad_norms=grads, hessian=hessian))
            measurements.append(dict(model=m, seed=seed, head_init='normal', when='init', loss=2.3, head=head,
                                     grad_norms=dict(grads, body=body_normal)))
    warmups = [dict(model=models[0], seed=0, losses=list(losses), **diagnose.trajectory(list(losses), 50))]
    collapse = [dict(folder='a.cifar10_e400', model='a', epochs=400, seed=0, bn_scales=100,
                     collapsed=int(100 * long_fraction), fraction=long_fraction, layers_all_collapsed=[],
                     layers_mostly_collapsed={}, per_stage={}),
                dict(folder='a.cifar10', model='a', epochs=20, seed=0, bn_scales=10000, collapsed=short_collapsed,
                     fraction=short_collapsed / 10000, layers_all_collapsed=[], layers_mostly_collapsed={},
                     per_stage={})]
    config = dict(models=models, seeds=[0, 1], head_inits=['timm', 'normal'], warmup_steps=50, peak_steps=10,
                  lr=0.35, test_images=0, batch_seed=0, batch_size=128, dataset='cifar10', drop_rate=0.2,
                  hessian_iters=20, hessian_tol=1e-5, momentum=0.9, weight_decay=6e-5, schedule_steps=7800)
    return dict(command='python scripts/diagnose.py', machine='test', versions={}, config=config,
                measurements=measurements, warmups=warmups, bn_collapse=collapse)


DW, XSEP, XSEP_P = 'mobilenetv3_small_dw_100', 'mobilenetv3_small_xsep_100', 'mobilenetv3_small_xsep_p_100'


def test_verdicts_confirm_what_the_numbers_support():
    results = _results({DW: 1.0, XSEP: 2.7, XSEP_P: 1.5}, {DW: 100.0, XSEP: 1500.0, XSEP_P: 900.0})
    gradient = '\n'.join(diagnose.verdict_gradient(results))
    assert '**confirmed**: mean ratio 2.70x (seeds 0, 1;' in gradient
    assert 'three convs in series' in gradient and '**not measured**' not in gradient.split('XSepConv-P')[0]
    assert 'XSepConv-P and XSepConv without its 2x2 conv, about 1.5x DW\'s at `blocks.0`: **confirmed**' in gradient
    assert '**confirmed**: mean ratio 12.0x' in diagnose.verdict_hessian(results)[0]
    assert '**confirmed**' in diagnose.verdict_collapse(results)[0]
    assert '**confirmed**' in diagnose.verdict_collapse(results)[1]
    assert '**confirmed**: the body' in diagnose.verdict_head(results)[0]
    assert '**refuted within 50 warm-up steps + 10 at the peak lr**' in diagnose.verdict_blowup(results)[0]


def test_verdicts_refute_what_the_numbers_contradict():
    results = _results({DW: 1.0, XSEP: 1.05, XSEP_P: 2.7}, {DW: 100.0, XSEP: 120.0, XSEP_P: 90.0},
                       body_normal=2.0, long_fraction=0.02, short_collapsed=50, losses=[2.3] * 55 + [4.0] * 5)
    gradient = diagnose.verdict_gradient(results)
    assert '**refuted**: mean ratio 1.05x' in gradient[0]
    assert '**refuted**' in gradient[1]
    assert '**refuted**' in diagnose.verdict_hessian(results)[0]
    assert '**refuted**' in diagnose.verdict_collapse(results)[0]
    assert '**refuted**' in diagnose.verdict_collapse(results)[1]
    assert '**refuted**' in diagnose.verdict_head(results)[0]
    assert '**confirmed**: 1 of 1 runs blew up' in diagnose.verdict_blowup(results)[0]
    assert 'at step 55' in diagnose.verdict_blowup(results)[0]
    # a blow-up is also a loss that is not finite, at any step
    assert diagnose.trajectory([2.3, math.nan], 2)['blew_up']
    assert not diagnose.trajectory([9.0] * 50, 50)['blew_up']  # high before step 50 is the init's, not a blow-up


# --- the script, end to end ------------------------------------------------------------------------------------

def test_script_writes_json_and_page(tmp_path, cifar10_dir, script_env):
    hub = tmp_path / 'hub'
    _hub_folder(hub, 'mobilenetv3_small_dw_050.cifar10_e400', 400, _state(bn1=[0.0, 1.0], blocks__4__1__bn3=[0.0, 0.0]))
    _hub_folder(hub, 'mobilenetv3_small_dw_050.cifar10', 20, _state(bn1=[1.0, 1.0], blocks__4__1__bn3=[0.5, 0.0]))
    output, page = tmp_path / 'diagnose.json', tmp_path / 'docs' / 'training-dynamics.md'
    args = ['--data-source', cifar10_dir, '--models', 'mobilenetv3_small_xsep_050', '--warmup-models',
            'mobilenetv3_small_xsep_050', '--seeds', '0', '1', '--batch-size', '8', '--hessian-iters', '2',
            '--warmup-steps', '3', '--test-limit', '16', '--hub-root', hub, '--output', output, '--docs', page]
    env = dict(script_env, OMP_NUM_THREADS='1')
    printed = run_script('diagnose.py', *args, env=env).stdout
    assert 'added DW partners: mobilenetv3_small_dw_050' in printed and 'time estimate:' in printed

    results = json.loads(output.read_text())
    config = results['config']
    assert config['models'] == ['mobilenetv3_small_dw_050', 'mobilenetv3_small_xsep_050']
    assert config['warmup_models'] == ['mobilenetv3_small_xsep_050'] and config['warmup_steps'] == 3
    keys = sorted((m['model'].replace('mobilenetv3_small_', ''), m['seed'], m['head_init'], m['when'])
                  for m in results['measurements'])
    expected = [(m, s, h, 'init') for m in ('dw_050', 'xsep_050') for s in (0, 1) for h in ('timm', 'normal')]
    assert keys == sorted(expected + [('xsep_050', s, 'timm', 'warm-up') for s in (0, 1)])
    for m in results['measurements']:
        assert list(m['grad_norms']) == [*STAGES, 'body', 'total']
        assert sum(m['grad_norms'][s] ** 2 for s in STAGES) == pytest.approx(m['grad_norms']['total'] ** 2, rel=1e-9)
        assert ('hessian' in m) == (m['head_init'] == 'timm')
        if 'hessian' in m:
            assert 1 <= m['hessian']['iterations'] <= 4 and math.isfinite(m['hessian']['eigenvalue'])
        if m['head_init'] == 'normal':
            assert m['head']['weight_std'] == pytest.approx(diagnose.NORMAL_HEAD_STD, rel=0.2)
    assert [(w['model'], w['seed'], w['steps'], len(w['losses'])) for w in results['warmups']] == \
        [('mobilenetv3_small_xsep_050', s, 3, 3) for s in (0, 1)]
    assert all(0 <= w['test_top1'] <= 100 and not w['blew_up'] for w in results['warmups'])
    collapse = {r['folder']: r for r in results['bn_collapse']}
    assert collapse['mobilenetv3_small_dw_050.cifar10_e400']['fraction'] == 0.75
    assert collapse['mobilenetv3_small_dw_050.cifar10_e400']['layers_all_collapsed'] == ['blocks.4.1.bn3']
    assert collapse['mobilenetv3_small_dw_050.cifar10']['collapsed'] == 1

    text = page.read_text()
    shown = ['/path/to/cifar10' if i and str(args[i - 1]) == '--data-source' else str(a) for i, a in enumerate(args)]
    command = 'python scripts/diagnose.py ' + ' '.join(shown)  # the local dataset folder shown as a placeholder
    assert results['config']['data_source'] == '/path/to/cifar10'
    assert text.startswith('# Training dynamics') and f'Measured with `{command}`' in text.split('##')[0]
    for number in range(1, 5):
        section = text.split(f'**{number}. ')[1].split('\n\n')[1]
        assert any(v in section for v in ('**confirmed', '**refuted', '**partly confirmed', '**not measured')), number
    assert '| xsep_050 | dw_050 | ' in text  # the ratio table
    assert '| dw_050 | timm | ' in text and '| xsep_050 | normal | ' in text
    assert '`mobilenetv3_small_dw_050.cifar10_e400` 75.0 %' in text  # verdict 3, from the numbers
    assert 'in the folder of fewer than 100 epochs: **refuted**: at most 25.00 %' in text

    again = tmp_path / 'again.md'
    run_script('diagnose.py', '--from-json', output, '--docs', again, env=env)
    written_by = f', page written by `python scripts/diagnose.py --from-json {output} --docs {again}`'
    assert written_by in again.read_text() and again.read_text().replace(written_by, '') == text

    # a folder published since: --recount-bn counts the scales again and keeps every other measurement
    _hub_folder(hub, 'mobilenetv3_small_xsep_050.cifar10', 20, _state(bn1=[0.0, 1.0, 1.0, 1.0]))
    recounted, page = tmp_path / 'recounted.json', tmp_path / 'recounted.md'
    run_script('diagnose.py', '--from-json', output, '--recount-bn', '--hub-root', hub, '--output', recounted,
               '--docs', page, env=env)
    now = json.loads(recounted.read_text())
    assert {k: v for k, v in now.items() if not k.startswith('bn_collapse')} == \
        {k: v for k, v in results.items() if k != 'bn_collapse'}
    assert [(r['folder'], r['collapsed']) for r in now['bn_collapse']] == [
        ('mobilenetv3_small_dw_050.cifar10', 1), ('mobilenetv3_small_dw_050.cifar10_e400', 3),
        ('mobilenetv3_small_xsep_050.cifar10', 1)]
    assert 'in the 2 folders of fewer than 100 epochs' in page.read_text()
    assert f'counted again with `python scripts/diagnose.py --from-json {output} --recount-bn' in page.read_text()
    refused = run_script('diagnose.py', '--recount-bn', '--docs', page, env=env, check=False)
    assert refused.returncode == 2 and '--recount-bn updates a saved run: pass --from-json' in refused.stderr


def test_the_page_names_no_local_dataset_folder():
    assert diagnose._data_as_placeholder(['--data-source', '/home/me/cifar10', '--seeds', '0']) == \
        ['--data-source', '/path/to/cifar10', '--seeds', '0']
    assert diagnose._data_as_placeholder(['--data-source=/home/me/cifar10']) == ['--data-source=/path/to/cifar10']
