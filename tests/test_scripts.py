"""Command-line scripts: what they write into the README and docs/ is what they compute now."""
import json
import math
import os
from pathlib import Path

import pytest

import xsep_zoo  # noqa: F401  (registers the models)

from conftest import ROOT, load_script as _load_script, run_script
from readme_section import replace_section


def test_docs_model_table_is_current():
    model_table = _load_script('model_table')
    page = (ROOT / 'docs' / 'models.md').read_text()
    assert replace_section(page, 'model-table', model_table.model_table(32)) == page


def test_welch_t_test_matches_the_t_distribution():
    zoo_table = _load_script('zoo_table')
    # equal sizes and variances: Student's t with 6 degrees of freedom, t = -2.191, two-sided p = 0.0710
    t, df, p = zoo_table.welch_t_test([1, 2, 3, 4], [3, 4, 5, 6])
    assert (round(t, 4), df, round(p, 4)) == (-2.1909, 6.0, 0.071)
    # unequal variances: p is twice the tail of the t density beyond |t|, integrated numerically
    t, df, p = zoo_table.welch_t_test([79.5, 82.6, 80.0], [85.2, 84.9, 85.5])
    density = lambda x: math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) * \
        (1 + x * x / df) ** (-(df + 1) / 2)
    step, tail = 1e-3, 0.0
    for i in range(400_000):
        tail += density(abs(t) + (i + 0.5) * step) * step
    assert p == pytest.approx(2 * tail, rel=1e-3)


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
    assert zoo_table.curve_label('DWConv', '20 epochs', {6.5: [84.8], 17.5: [85.2, 84.9]}) == \
        'DWConv, 20 epochs (MobileNetV3-Small widths; mean of seeds)'
    assert zoo_table.curve_label('DWConv', '400 epochs', {17.5: [89.7]}) == 'DWConv, 400 epochs (one run)'
    assert zoo_table.curve_label('XSepConv', '400 epochs', {16.7: [89.0, 89.2]}) == \
        'XSepConv, 400 epochs (mean of seeds)'


def test_zoo_table_averages_seeds_of_one_recipe_only():
    zoo_table = _load_script('zoo_table')
    row = dict(architecture='mobilenetv3_small_dw_100', top5=99.0, macs=17.5e6, params=1.5e6)
    rows = [dict(row, folder='a.cifar10', seed=0, epochs=20, top1=85.0, recipe_name='paper'),
            dict(row, folder='a.cifar10_seed1', seed=1, epochs=20, top1=84.0, recipe_name='paper'),
            dict(row, folder='a.cifar10_other', seed=0, epochs=20, top1=87.0, recipe_name='other'),
            dict(row, folder='a.cifar10_other1', seed=1, epochs=20, top1=88.0, recipe_name='other'),
            dict(row, folder='a.cifar10_e400', seed=0, epochs=400, top1=90.0, recipe_name='paper')]
    means = [line for line in zoo_table.zoo_table(rows, 'plot.png').splitlines() if 'mean of' in line]
    assert means == ['| `mobilenetv3_small_dw_100`, mean of 2 seeds | | 20 epochs | | 84.50 (sd 0.71) | | | | |',
                     '| `mobilenetv3_small_dw_100`, mean of 2 seeds | | 20 epochs, other recipe | | 87.50 (sd 0.71) '
                     '| | | | |']


def test_recipes_are_ranked_on_pairs_with_two_seeds_of_each():
    zoo_table = _load_script('zoo_table')
    row = dict(top5=99.0, macs=17e6, params=1.5e6, epochs=20)
    dw, xsep = 'mobilenetv3_small_dw_100', 'mobilenetv3_small_xsep_100'
    rows = [dict(row, architecture=arch, folder=f'{arch}.{recipe}{seed}', seed=seed, recipe_name=recipe, top1=top1)
            for arch, recipe, seed, top1 in [
                (dw, 'paper', 0, 85.0), (dw, 'paper', 1, 85.4), (xsep, 'paper', 0, 80.0), (xsep, 'paper', 1, 81.0),
                (dw, 'other', 0, 86.0), (dw, 'other', 1, 86.2), (xsep, 'other', 0, 82.0), (xsep, 'other', 1, 82.4),
                (dw, 'third', 0, 90.0), (xsep, 'third', 0, 90.0), (xsep, 'third', 1, 90.0)]]
    # means: paper (80.5 + 85.2) / 2 = 82.85, other (82.2 + 86.1) / 2 = 84.15; 'third' has one DW seed only
    assert zoo_table.recipe_lines(rows) == [
        f"- 20 epochs, `{xsep}` and `{dw}`, mean of the two architectures' seed means: other recipe 84.15, "
        'paper recipe 82.85; the better is other']
    assert zoo_table.recipe_lines([r for r in rows if r['recipe_name'] != 'other']) == []


def test_widths_compare_xsepconv_with_dw_of_the_same_width_and_recipe():
    zoo_table = _load_script('zoo_table')
    row = dict(top5=99.0, macs=17e6, params=1.5e6, epochs=20)
    rows = [dict(row, architecture=f'mobilenetv3_small_{arch}', folder=f'{arch}.{recipe}{seed}', seed=seed,
                 recipe_name=recipe, top1=top1)
            for arch, recipe, seed, top1 in [
                ('dw_100', 'paper', 0, 85.0), ('dw_100', 'paper', 1, 85.4), ('xsep_100', 'paper', 0, 80.0),
                ('xsep_100', 'paper', 1, 81.0), ('xsep_100', 'paper', 2, 82.0),
                ('dw_050', 'paper', 0, 83.0), ('xsep_050', 'paper', 0, 83.5),
                ('dw_125', 'other', 0, 86.0), ('xsep_125', 'other', 0, 85.0),  # one width only: no line
                ('xsep_k7_100', 'paper', 0, 90.0), ('dw_k7_100', 'paper', 0, 80.0),  # not a width of Fig. 3
                ('xsep_075', 'paper', 0, 90.0)]]  # no DW partner under this recipe
    assert zoo_table.width_lines(rows) == [
        '- 20 epochs: width 0.50 +0.50 (1 seed each), width 1.00 -4.20 (3 and 2 seeds); XSepConv is ahead at 1 of 2 '
        'widths']


def test_zoo_plot_labels_of_close_variants_do_not_overlap_each_other_or_markers():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    zoo_table = _load_script('zoo_table')
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.set_xlim(5, 20)
    ax.set_ylim(79, 86)
    points = [(16.71, 85.24, 'xsep_asympad'), (17.58, 85.17, 'xsep_ds7'), (17.65, 85.17, 'dw_ds7'),
              (16.44, 84.84, 'xsep_no2x2'), (16.71, 84.51, 'xsep_sympad'), (17.17, 84.47, 'xsep_k7')]
    curve = [(16.71, 85.45), (17.51, 85.30)]  # width-curve points just above a variant: its label would name them
    markers = [(x, y) for x, y, _ in points] + curve
    zoo_table._annotate_without_overlap(ax, points, markers)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    marker_boxes = [zoo_table.marker_box(ax, x, y) for x, y in markers]
    plt.close(fig)
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(label for *_, label in points)
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not [(box, marker) for box in boxes for marker in marker_boxes if box.overlaps(marker)]


def test_export_shows_paths_from_the_repository_root():
    export = _load_script('export')
    assert export.portable(str(ROOT / 'scripts' / 'train.py')) == 'scripts/train.py'
    assert export.portable(f'{ROOT}/runs/../runs/x') == 'runs/x'
    if ROOT.parent != Path(ROOT.anchor):
        assert export.portable(str(ROOT.parent / 'data' / 'cifar10')) == '../data/cifar10'
    assert export.portable('/proc/cpuinfo') == '/proc/cpuinfo'  # outside the checkout's folder: kept
    assert export.portable('runs/x') == 'runs/x' and export.portable(None) is None and export.portable(0.35) == 0.35
    # the first stretch of a long run: the card's command trains all of it (older runs also recorded --runs-at-once)
    first_stretch = (f'{ROOT}/scripts/train.py --model m --seed 0 --time-limit 148 --output-dir {ROOT}/runs/r '
                     '--runs-at-once=2')
    assert export._portable_command(first_stretch) == 'scripts/train.py --model m --seed 0 --output-dir runs/r'
    # a local dataset copy is named by what it is, never by a path of the machine that trained
    assert export._portable_command('train.py --data-source /data/cifar10 --seed 1') == \
        'train.py --data-source $DATA --seed 1'
    assert export._portable_command('train.py --runs-at-once 2 --seed 1 --time-limit=9') == 'train.py --seed 1'


def test_export_names_each_machine_once_per_stretch_of_epochs():
    export = _load_script('export')
    record = {'machine': 'CPU A, 1 thread x 1 process, torch 2'}
    # older log lines: the first without a machine, and with how many runs shared it and the float mode
    log = [dict(epoch=1, seconds=3600), dict(epoch=2, seconds=1800, machine=record['machine'], runs_at_once=2),
           dict(epoch=3, seconds=360, machine='1 x GPU, torch 2', runs_at_once=2, flush_denormal=False),
           dict(epoch=4, seconds=3600, machine=record['machine'], flush_denormal=True),
           dict(epoch=5, seconds=3600, machine=record['machine'], flush_denormal=False)]
    stretches = export._stretches(record, log)
    assert stretches == [dict(machine=record['machine'], epochs=[1, 2], seconds=5400),
                         dict(machine='1 x GPU, torch 2', epochs=[3, 3], seconds=360),
                         dict(machine=record['machine'], epochs=[4, 5], seconds=7200)]
    assert export._hardware(stretches) == 'CPU A; GPU'  # each processor once: the card says what, not how


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
    assert set(rows) == {(dw, 'plain'), (xsep, 'plain'), (xsep, 'folded'), (xsep, 'fused')}  # DW: nothing to fuse
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
    assert {p['form'] for p in data['pairs']} == {'plain', 'folded', 'fused'}
    (fastest,) = data['fastest']
    xsep_forms = [r for r in data['models'] if r['model'] == 'mobilenetv3_small_xsep_100']
    best = max(xsep_forms, key=lambda r: r['eval']['median'])
    assert fastest['eval_forms'] == (best['form'], 'plain') or fastest['eval_forms'] == [best['form'], 'plain']
    assert fastest['eval_ratio'] == pytest.approx(dw['eval']['median'] / best['eval']['median'])
    quickest = min(xsep_forms, key=lambda r: r['latency_ms']['median'])
    assert fastest['latency_ratio'] == pytest.approx(quickest['latency_ms']['median'] / dw['latency_ms']['median'])


def test_benchmark_layers_are_the_swapped_slots(benchmark_run):
    data, _, _ = benchmark_run
    layers = {r['layer']: r for r in data['layers']}
    assert sorted(layers) == ['blocks.2.1.conv_dw', 'blocks.2.2.conv_dw', 'blocks.3.0.conv_dw', 'blocks.3.1.conv_dw',
                              'blocks.4.1.conv_dw', 'blocks.4.2.conv_dw']
    assert layers['blocks.2.1.conv_dw']['input'] == [240, 8, 8] and layers['blocks.4.1.conv_dw']['input'] == [576, 4, 4]
    # the paper's per-layer ratio (4 + 2k) / k^2 against a 5x5 DW conv: k=5 in the middle, k=3 in the last stage
    assert layers['blocks.2.1.conv_dw']['mac_ratio'] == pytest.approx(14 / 25)
    assert layers['blocks.4.1.conv_dw']['mac_ratio'] == pytest.approx(10 / 25)
    assert all(r['batch'] == 2 and r['fused_ms']['n'] == 2 and r['folded_ms']['n'] == 2 for r in data['layers'])
    assert all(r['fused_op'] for r in data['layers'])  # the op builds here: the fused form is one op
    limits, first = data['limits'], layers['blocks.2.1.conv_dw']
    assert limits['bytes_per_s'] > 1e8 and limits['macs_per_s'] > 1e8
    # 2 images x (240 x 8 x 8 in + the same out) x 4 bytes at the measured bandwidth
    assert first['xsep_limit']['memory_ms'] == pytest.approx(1e3 * 2 * 2 * 240 * 64 * 4 / limits['bytes_per_s'])
    assert first['dw_limit']['arithmetic_ms'] == pytest.approx(1e3 * 2 * 240 * 64 * 25 / limits['macs_per_s'])


def test_benchmark_tables_go_into_the_readme_section(benchmark_run):
    data, stdout, folder = benchmark_run
    assert '| `mobilenetv3_small_xsep_100` | fused |' in stdout and 'Per layer' in stdout and 'of limit' in stdout
    readme, summary = folder / 'README.md', folder / 'SUMMARY.md'
    readme.write_text('before\n<!-- benchmark-cpu:start -->\nold\n<!-- benchmark-cpu:end -->\nafter\n')
    summary.write_text('<!-- speed-summary:start -->\n<!-- speed-summary:end -->\n')
    run_script('benchmark.py', '--from-json', folder / 'result.json', '--readme', readme, '--summary', summary,
               env=dict(os.environ))
    assert readme.read_text() == f'before\n<!-- benchmark-cpu:start -->\n{stdout}<!-- benchmark-cpu:end -->\nafter\n'
    assert 'in its fastest form' in summary.read_text() and '`mobilenetv3_small_xsep_100`' in summary.read_text()


@pytest.mark.parametrize('section', ['benchmark-cpu', 'benchmark-cuda'])
def test_docs_benchmark_tables_come_from_the_script(section):
    readme = (ROOT / 'docs' / 'speed.md').read_text()
    start, end = f'<!-- {section}:start -->', f'<!-- {section}:end -->'
    body = readme.split(start)[1].split(end)[0]
    assert body.lstrip().startswith('Measured on') and '`python scripts/benchmark.py' in body
    assert 'XSepConv / DW ratios' in body and 'Per layer' in body


def test_compare_runs_names_what_each_run_changed(tmp_path):
    compare_runs = _load_script('compare_runs')
    base = dict(model='m', seed=2, warmup_epochs=1, head_init='timm', data_source='/somewhere', eval_batch_size=256)
    runs = []
    for name, change, log in [('a', {}, [(1, 1.99, 23.93), (2, 1.86, 34.19)]),
                              ('b', dict(warmup_epochs=5, data_source='/elsewhere'), [(1, 1.5, 40.0)])]:
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / 'config.json').write_text(json.dumps(dict(config={**base, **change})))
        (run_dir / 'log.jsonl').write_text(''.join(
            json.dumps(dict(epoch=e, train_loss=loss, test_top1=top1)) + '\n' for e, loss, top1 in log))
        runs.append(compare_runs.read_run(run_dir))
    assert compare_runs.table(runs, [1, 2]).splitlines() == [
        '| epoch | m warmup_epochs=1 | m warmup_epochs=5 |', '|---:|---|---|',
        '| 1 | 1.990 / 23.93 | 1.500 / 40.00 |', '| 2 | 1.860 / 34.19 | - |']
    with pytest.raises(SystemExit, match='not a run'):
        compare_runs.read_run(tmp_path)


def test_benchmark_says_which_goals_are_met_and_by_how_much_not():
    benchmark = _load_script('benchmark')
    limit = dict(memory_ms=1.0, arithmetic_ms=0.5)
    layer = dict(model='x', precision='fp32', batch=256, folded_ms={}, xsep_limit=limit, dw_limit=limit)
    result = dict(layers=[dict(layer, layer='a', fused_ms=dict(median=0.9), dw_ms=dict(median=1.0)),
                          dict(layer, layer='b', fused_ms=dict(median=1.5), dw_ms=dict(median=1.0))],
                  fastest=[dict(model='x', dw='d', precision='fp32', eval_ratio=0.95, eval_forms=['fused', 'plain'],
                                latency_ratio=1.2, latency_forms=['compiled', 'compiled'])])
    lines = benchmark.goal_lines(result, 'fp32')
    assert '- `x`, its 2 layers at batch 256: not met by 1 of 2: b takes 50% longer (1.5x its limit, DW 1.0x).' in lines
    assert '- `x` against `d`, eval (fused / plain): met.' in lines
    assert '- `x` against `d`, latency (compiled / compiled): not met: XSepConv takes 20% longer.' in lines
