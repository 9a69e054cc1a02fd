"""Command-line scripts: what they write into the README is what they compute now."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

import xsep_zoo  # noqa: F401  (registers the models)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))  # scripts import their sibling helpers, as when run directly

from conftest import run_script  # noqa: E402
from readme_section import replace_section  # noqa: E402


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_model_table_is_current():
    model_table = _load_script('model_table')
    readme = (ROOT / 'README.md').read_text()
    assert replace_section(readme, 'model-table', model_table.model_table(32)) == readme


def test_replace_section_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match='expected exactly one <!-- table:start --> ... <!-- table:end --> section'):
        replace_section('no table here', 'table', 'x')
    with pytest.raises(ValueError, match='expected exactly one'):
        replace_section('<!-- t:start -->\n<!-- t:end -->\n<!-- t:start -->', 't', 'x')
    text = 'a\n<!-- t:start -->\nold\n<!-- t:end -->\nb'
    assert replace_section(text, 't', 'new\n') == 'a\n<!-- t:start -->\nnew\n<!-- t:end -->\nb'


def test_readme_zoo_table_is_current():
    zoo_table = _load_script('zoo_table')
    root = ROOT / 'hub_cards'
    table = zoo_table.zoo_table(zoo_table.load_results(root), 'hub_cards/zoo_top1_vs_macs.png')
    readme = (ROOT / 'README.md').read_text()
    assert replace_section(readme, 'zoo-table', table) == readme


def test_plot_legend_says_what_each_curve_averages():
    zoo_table = _load_script('zoo_table')
    assert zoo_table.curve_label('DWConv', 20, {6.5: [84.8], 17.5: [85.2, 84.9]}) == \
        'DWConv, 20 epochs (MobileNetV3-Small widths; mean of seeds)'
    assert zoo_table.curve_label('DWConv', 400, {17.5: [89.7]}) == 'DWConv, 400 epochs (one run)'
    assert zoo_table.curve_label('XSepConv', 400, {16.7: [89.0, 89.2]}) == 'XSepConv, 400 epochs (mean of seeds)'


def test_zoo_table_averages_seeds_of_one_recipe_only():
    zoo_table = _load_script('zoo_table')
    row = dict(architecture='mobilenetv3_small_dw_100', top5=99.0, macs=17.5e6, params=1.5e6)
    rows = [dict(row, folder='a.cifar10', seed=0, epochs=20, top1=85.0),
            dict(row, folder='a.cifar10_seed1', seed=1, epochs=20, top1=84.0),
            dict(row, folder='a.cifar10_e400', seed=0, epochs=400, top1=90.0)]
    means = [line for line in zoo_table.zoo_table(rows, 'plot.png').splitlines() if 'mean of' in line]
    assert means == ['| `mobilenetv3_small_dw_100`, mean of 2 seeds | | 20 | | 84.50 (sd 0.71) | | | | |']


def test_zoo_plot_labels_of_close_variants_do_not_overlap():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    zoo_table = _load_script('zoo_table')
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.set_xlim(5, 20)
    ax.set_ylim(79, 86)
    points = [(16.71, 85.24, 'xsep_asympad'), (17.58, 85.17, 'xsep_ds7'), (17.65, 85.17, 'dw_ds7'),
              (16.44, 84.84, 'xsep_no2x2'), (16.71, 84.51, 'xsep_sympad'), (17.17, 84.47, 'xsep_k7')]
    zoo_table._annotate_without_overlap(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    plt.close(fig)
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(label for *_, label in points)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]


def test_train_queue_guesses_epochs_from_whole_runs(tmp_path, monkeypatch):
    train_queue = _load_script('train_queue')
    monkeypatch.setattr(train_queue, 'ROOT', tmp_path)
    monkeypatch.setattr(train_queue.os, 'cpu_count', lambda: 2)
    assert train_queue.epoch_seconds(parallel=1) == 180.0  # nothing logged yet
    for name, seconds in (('a.cifar10.seed0', [250] * 19 + [500]), ('b.cifar10.seed0', [300] * 10)):
        (tmp_path / 'runs' / name).mkdir(parents=True)
        log = ''.join(json.dumps(dict(seconds=t)) + '\n' for t in seconds)
        (tmp_path / 'runs' / name / 'log.jsonl').write_text(log)
    assert train_queue.epoch_seconds(parallel=1) == 300.0  # one slow epoch of run a does not set the guess
    assert train_queue.seconds_needed('b', 0, parallel=2) == 10 * 300.0 + 120
    assert train_queue.seconds_needed('b', 0, parallel=3) == 10 * 300.0 * 1.5 + 120  # 3 runs share 2 cores


def test_train_queue_takes_runs_at_the_same_parallelism_as_measured(tmp_path, monkeypatch):
    train_queue = _load_script('train_queue')
    monkeypatch.setattr(train_queue, 'ROOT', tmp_path)
    monkeypatch.setattr(train_queue.os, 'cpu_count', lambda: 2)
    for name, seconds, parallel in (('alone.cifar10.seed0', 300, None), ('three.cifar10.seed0', 390, 3)):
        (tmp_path / 'runs' / name).mkdir(parents=True)
        (tmp_path / 'runs' / name / 'log.jsonl').write_text(json.dumps(dict(seconds=seconds)) + '\n')
        if parallel:
            (tmp_path / 'runs' / f'{name}.queue.json').write_text(json.dumps(dict(parallel=parallel)))
    assert train_queue.epoch_seconds(parallel=3) == 390.0  # measured three at once, not scaled again
    assert train_queue.epoch_seconds(parallel=2) == 300.0  # the three-at-once run scaled to a core each: 260
    assert train_queue.epoch_seconds(parallel=4) == 600.0  # nothing measured at 4: scaled, the slowest


def test_train_queue_takes_the_runs_at_once_each_epoch_logged(tmp_path, monkeypatch):
    train_queue = _load_script('train_queue')
    monkeypatch.setattr(train_queue, 'ROOT', tmp_path)
    monkeypatch.setattr(train_queue.os, 'cpu_count', lambda: 2)
    (tmp_path / 'runs' / 'resumed.cifar10.seed0').mkdir(parents=True)
    log = [dict(seconds=200, runs_at_once=1)] * 3 + [dict(seconds=330, runs_at_once=2)]
    (tmp_path / 'runs' / 'resumed.cifar10.seed0' / 'log.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in log))
    assert train_queue.epoch_seconds(parallel=1) == 200.0  # not the mean of all four epochs
    assert train_queue.epoch_seconds(parallel=2) == 330.0


def test_train_queue_tells_each_run_how_many_share_the_cpu(tmp_path, monkeypatch):
    train_queue = _load_script('train_queue')
    monkeypatch.setattr(train_queue, 'ROOT', tmp_path)
    started = []
    monkeypatch.setattr(train_queue.subprocess, 'Popen', lambda args, **kwargs: started.append((args, kwargs['env'])))
    train_queue.start('mobilenetv3_small_dw_100', 0, parallel=2)
    (args, env), = started
    assert args[args.index('--runs-at-once') + 1] == '2' and env['OMP_NUM_THREADS'] == '1'


def test_export_shows_paths_from_the_repository_root():
    export = _load_script('export')
    assert export.portable(str(ROOT / 'scripts' / 'train.py')) == 'scripts/train.py'
    assert export.portable(f'{ROOT}/runs/../runs/x') == 'runs/x'
    if ROOT.parent != Path(ROOT.anchor):
        assert export.portable(str(ROOT.parent / 'shared' / 'datasets' / 'cifar10')) == '../shared/datasets/cifar10'
    assert export.portable('/proc/cpuinfo') == '/proc/cpuinfo'  # outside the checkout's folder: kept
    assert export.portable('runs/x') == 'runs/x' and export.portable(None) is None and export.portable(0.35) == 0.35
    # the first stretch of a long run: the card's command trains all of it
    first_stretch = (f'{ROOT}/scripts/train.py --model m --seed 0 --time-limit 148 --output-dir {ROOT}/runs/r '
                     '--runs-at-once=2')
    assert export._portable_command(first_stretch) == 'scripts/train.py --model m --seed 0 --output-dir runs/r'


BENCH_MODELS = ('mobilenetv3_small_dw_100', 'mobilenetv3_small_xsep_100')


@pytest.fixture(scope='module')
def benchmark_run(tmp_path_factory):
    """A tiny CPU benchmark of the main pair: two rounds, small batches."""
    folder = tmp_path_factory.mktemp('benchmark')
    args = ['--device', 'cpu', '--threads', '1', '--models', *BENCH_MODELS, '--rounds', '2', '--warmup-rounds', '0',
            '--eval-batch', '4', '--train-batch', '4', '--eval-iters', '1', '--train-iters', '1',
            '--latency-calls', '3', '--layer-batches', '2', '--json', folder / 'result.json']
    result = run_script('benchmark.py', *args, env=dict(os.environ))
    return json.loads((folder / 'result.json').read_text()), result.stdout, folder


def test_benchmark_measures_every_form_interleaved(benchmark_run):
    data, _, _ = benchmark_run
    dw, xsep = BENCH_MODELS
    rows = {(r['model'], r['form']): r for r in data['models']}
    assert set(rows) == {(dw, 'plain'), (xsep, 'plain'), (xsep, 'fused')}  # DW models have nothing to fuse
    for (model, form), r in rows.items():
        assert r['eval']['n'] == 2 and r['latency_ms']['n'] == 2 * 3  # per round; every single call
        assert r['eval']['min'] <= r['eval']['median'] <= r['eval']['max']
        assert (r.get('train') is not None) == (form == 'plain')  # a fused model cannot train
    assert rows[(xsep, 'plain')]['macs'] < rows[(dw, 'plain')]['macs']


def test_benchmark_ratios_are_xsep_over_dw(benchmark_run):
    data, _, _ = benchmark_run
    rows = {(r['model'], r['form']): r for r in data['models']}
    dw = rows[('mobilenetv3_small_dw_100', 'plain')]
    for pair in data['pairs']:
        xsep = rows[(pair['model'], pair['form'])]
        assert pair['dw'] == 'mobilenetv3_small_dw_100'
        assert pair['mac_ratio'] == pytest.approx(xsep['macs'] / dw['macs'])
        assert pair['eval_ratio'] == pytest.approx(dw['eval']['median'] / xsep['eval']['median'])
        assert pair['latency_ratio'] == pytest.approx(xsep['latency_ms']['median'] / dw['latency_ms']['median'])
    assert {p['form'] for p in data['pairs']} == {'plain', 'fused'}


def test_benchmark_layers_are_the_swapped_slots(benchmark_run):
    data, _, _ = benchmark_run
    layers = {r['layer']: r for r in data['layers']}
    assert sorted(layers) == ['blocks.2.1.conv_dw', 'blocks.2.2.conv_dw', 'blocks.3.0.conv_dw', 'blocks.3.1.conv_dw',
                              'blocks.4.1.conv_dw', 'blocks.4.2.conv_dw']
    assert layers['blocks.2.1.conv_dw']['input'] == [240, 8, 8] and layers['blocks.4.1.conv_dw']['input'] == [576, 4, 4]
    # the paper's per-layer ratio (4 + 2k) / k^2 against a 5x5 DW conv: k=5 in the middle, k=3 in the last stage
    assert layers['blocks.2.1.conv_dw']['mac_ratio'] == pytest.approx(14 / 25)
    assert layers['blocks.4.1.conv_dw']['mac_ratio'] == pytest.approx(10 / 25)
    assert all(r['batch'] == 2 and r['fused_ms']['n'] == 2 for r in data['layers'])


def test_benchmark_tables_go_into_the_readme_section(benchmark_run):
    data, stdout, folder = benchmark_run
    assert '| `mobilenetv3_small_xsep_100` | fused |' in stdout and 'Per layer' in stdout
    readme = folder / 'README.md'
    readme.write_text('before\n<!-- benchmark-cpu:start -->\nold\n<!-- benchmark-cpu:end -->\nafter\n')
    run_script('benchmark.py', '--from-json', folder / 'result.json', '--readme', readme, env=dict(os.environ))
    assert readme.read_text() == f'before\n<!-- benchmark-cpu:start -->\n{stdout}<!-- benchmark-cpu:end -->\nafter\n'


@pytest.mark.parametrize('section', ['benchmark-cpu', 'benchmark-cuda'])
def test_readme_benchmark_tables_come_from_the_script(section):
    readme = (ROOT / 'README.md').read_text()
    start, end = f'<!-- {section}:start -->', f'<!-- {section}:end -->'
    body = readme.split(start)[1].split(end)[0]
    assert body.lstrip().startswith('Measured on') and '`python scripts/benchmark.py' in body
    assert 'XSepConv / DW ratios' in body and 'Per layer' in body


def test_readme_subnormal_table_comes_from_the_script():
    readme = (ROOT / 'README.md').read_text()
    body = readme.split('<!-- subnormal-speed:start -->')[1].split('<!-- subnormal-speed:end -->')[0]
    assert 'written by `python scripts/subnormal_speed.py' in body and '| slowdown |' in body
    assert '| `mobilenetv3_small_xsep_100` |' in body


def test_subnormal_speed_reads_an_exported_hub_folder(script_env):
    """The README's table is measured on the published weights, whose config.json is timm's, not a run's."""
    folder = ROOT / 'hub_cards' / 'mobilenetv3_small_xsep_100.cifar10_e400'
    table = run_script('subnormal_speed.py', folder, '--batch-size', '8', '--rounds', '1', '--steps', '1',
                       env=script_env).stdout
    rows = [line.split(' | ')[:2] for line in table.splitlines() if line.startswith('| `')]
    name = '| `mobilenetv3_small_xsep_100`'
    assert rows == [[name, f'`{folder / "model.safetensors"}`'], [name, 'fresh']]


def test_subnormal_speed_counts_the_subnormal_weights_and_times_both_modes(tmp_path, script_env):
    run = tmp_path / 'run'
    run.mkdir()
    config = {'config': {'model': 'mobilenetv3_small_xsep_050', 'dataset': 'cifar10'}}
    (run / 'config.json').write_text(json.dumps(config))
    state = timm.create_model('mobilenetv3_small_xsep_050', num_classes=10).state_dict()
    state['blocks.2.1.conv_dw.conv_2x2.weight'].view(-1)[:3] = 1e-40
    save_file({k: v.contiguous() for k, v in state.items()}, run / 'model.safetensors')
    readme = tmp_path / 'README.md'
    readme.write_text('no section yet\n')
    refused = run_script('subnormal_speed.py', run, '--readme', readme, env=script_env, check=False)
    assert refused.returncode != 0 and 'expected exactly one <!-- subnormal-speed:start -->' in refused.stderr
    readme.write_text('<!-- subnormal-speed:start -->\n<!-- subnormal-speed:end -->\n')

    table = run_script('subnormal_speed.py', run, '--batch-size', '16', '--rounds', '1', '--steps', '1',
                       '--readme', readme, env=script_env).stdout
    rows = [line.split(' | ') for line in table.splitlines() if line.startswith('| `')]
    total = sum(v.numel() for v in state.values() if v.is_floating_point())
    assert [(row[1], row[2]) for row in rows] == [(f'`{run / "model.safetensors"}`', f'3 of {total:,}'),
                                                  ('fresh', f'0 of {total:,}')]
    assert all(float(row[3]) > 0 and float(row[4]) > 0 for row in rows)
    assert f'`python scripts/subnormal_speed.py {run} --batch-size 16 --rounds 1 --steps 1`' in table
    assert table in readme.read_text()
