"""scripts/sweep.py: runs named by what they change, several at once, resumed after a kill, failures reported;
and the throughput measurement. Tiny runs on the small CIFAR-10 the tests make (conftest.py)."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import MODEL, ROOT, load_script, run_script

TINY = ['train_limit=256', 'test_limit=128', 'epochs=2', 'warmup_epochs=0', 'lr=0.1', 'batch_size=64']
NAME = f'{MODEL}.cifar10.train_limit=256,test_limit=128,batch_size=64,warmup_epochs=0,epochs=2,lr=0.1'


@pytest.fixture(scope='module')
def sweep():
    return load_script('sweep')


def _sweep_command(root, seeds, cifar10_dir, *options, settings=TINY):
    return [sys.executable, str(ROOT / 'scripts' / 'sweep.py'), '--root', str(root), '--models', MODEL,
            '--seeds', *map(str, seeds), *options, '--set', *settings, '--', '--data-source', str(cifar10_dir)]


def _statuses(stdout: str) -> dict:
    """The final status lines: run name -> status."""
    summary = stdout.split(' runs in ', 1)[1].splitlines()[1:]
    return dict(line.split(': ', 1) for line in summary if ': ' in line)


@pytest.fixture(scope='module')
def finished_sweep(tmp_path_factory, script_env, cifar10_dir):
    """Two runs trained at once, one CPU thread each."""
    root = tmp_path_factory.mktemp('sweep') / 'runs'
    result = subprocess.run(_sweep_command(root, [0, 1], cifar10_dir, '--runs-at-once', '2', '--cores', '2'),
                            env=script_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return root, result


def test_runs_are_named_by_what_differs_from_the_recipe(sweep, tmp_path):
    runs = sweep.plan([MODEL, 'mobilenetv3_small_dw_050'], [0, 1], 'cifar10', ['lr=0.1,0.35', 'epochs=20'],
                      ['--data-source', '/data/cifar10'], tmp_path)
    assert [r.name for r in runs[:4]] == [
        f'{MODEL}.cifar10.epochs=20,lr=0.1.seed0', f'{MODEL}.cifar10.epochs=20.seed0',  # lr 0.35 is the default
        'mobilenetv3_small_dw_050.cifar10.epochs=20,lr=0.1.seed0', 'mobilenetv3_small_dw_050.cifar10.epochs=20.seed0']
    assert len(runs) == 8 and runs[4].name.endswith('.seed1')  # seed by seed: the models' pairs finish together
    assert runs[0].dir == tmp_path / runs[0].name
    assert runs[0].flags == ['--model', MODEL, '--dataset', 'cifar10', '--seed', '0', '--lr', '0.1', '--epochs', '20',
                             '--data-source', '/data/cifar10']
    plain = sweep.plan([MODEL], [2], 'cifar10', ['channels_last=false'], [], tmp_path)[0]
    assert plain.name == f'{MODEL}.cifar10.channels_last=false.seed2' and '--no-channels-last' in plain.flags
    assert sweep.plan([MODEL], [2], 'cifar10', [], [], tmp_path)[0].name == f'{MODEL}.cifar10.paper.seed2'
    # a named recipe is named, however its choices were given
    for flags in (['--recipe', 'zero-init-last'], ['--zero-init-last']):
        named = sweep.plan([MODEL], [2], 'cifar10', ['epochs=20'], flags, tmp_path)[0]
        assert named.name == f'{MODEL}.cifar10.zero-init-last,epochs=20.seed2'


@pytest.mark.parametrize('settings, extra, message', [
    (['seed=3'], [], "--set 'seed=3': the sweep sets seed; use --seeds"),
    (['epok=20'], [], 'unrecognized arguments: --epok 20'),
    (['lr=-1'], [], '--lr -1.0: must be a positive number'),
    (['lr'], [], "--set 'lr': expected KEY=VALUE"),
    ([], ['--head-init', 'zeros'], "argument --head-init: invalid choice: 'zeros'"),
])
def test_impossible_runs_are_refused_before_any_starts(settings, extra, message, sweep, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(message)):
        sweep.plan([MODEL], [0], 'cifar10', settings, extra, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('extra, message', [
    (['--output-dir', 'x'], '--output-dir after --: the sweep sets it; use --root'),
    (['--time-limit=5'], '--time-limit=5 after --: the sweep sets it; use --time-limit'),
])
def test_flags_the_sweep_sets_are_refused_after_the_separator(extra, message, tmp_path, script_env):
    result = run_script('sweep.py', '--root', tmp_path / 'runs', '--models', MODEL, '--', *extra, env=script_env,
                        check=False)
    assert result.returncode != 0 and message in result.stderr and not (tmp_path / 'runs').exists()


def test_a_run_killed_before_recording_its_config_starts_again(sweep, tmp_path):
    run = sweep.Run('m.cifar10.paper.seed0', tmp_path / 'm.cifar10.paper.seed0', [])
    run.dir.mkdir()
    (run.dir / '.lock').write_text('123\n')
    (run.dir / 'train.log').write_text('$ python scripts/train.py ...\n')
    sweep._clear_unstarted(run)
    assert not run.dir.exists() and (tmp_path / 'm.cifar10.paper.seed0.log').read_text().startswith('$ python')
    run.dir.mkdir()
    (run.dir / 'notes.txt').write_text('not the sweep\'s')  # anything else: left for train.py to refuse
    sweep._clear_unstarted(run)
    assert (run.dir / 'notes.txt').is_file()


def test_two_runs_at_once_finish(finished_sweep):
    root, result = finished_sweep
    assert _statuses(result.stdout) == {f'{NAME}.seed0': 'finished', f'{NAME}.seed1': 'finished'}
    assert result.stdout.count('(1 thread)') == 2  # 2 cores for 2 runs
    for seed in (0, 1):
        run_dir = root / f'{NAME}.seed{seed}'
        assert (run_dir / 'model.safetensors').is_file()
        log = (run_dir / 'train.log').read_text()
        assert log.startswith('$ ') and '"epoch": 2' in log  # the command, then what train.py printed
    assert sorted(p.name for p in root.iterdir()) == [f'{NAME}.seed0', f'{NAME}.seed1']  # no log left beside them
    assert not torch.equal(*(load_file(root / f'{NAME}.seed{s}' / 'model.safetensors')['conv_stem.weight']
                             for s in (0, 1)))


def test_a_killed_sweep_run_again_finishes_with_the_same_weights(finished_sweep, tmp_path, script_env, cifar10_dir):
    reference, _ = finished_sweep
    root = tmp_path / 'runs'
    command = _sweep_command(root, [0, 1], cifar10_dir, '--runs-at-once', '1', '--cores', '1')
    proc = subprocess.Popen(command, env=script_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = root / f'{NAME}.seed0'
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (first / 'checkpoints' / 'latest.json').is_file():
        time.sleep(0.01)
    assert proc.poll() is None, 'the sweep ended before it could be killed'
    proc.send_signal(signal.SIGKILL)  # the sweep only: its run goes with it
    proc.wait()
    assert not (first / 'model.safetensors').exists() and not (root / f'{NAME}.seed1').exists()
    result = subprocess.run(command, env=script_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'started {NAME}.seed0 (1 thread, resumed)' in result.stdout
    assert _statuses(result.stdout) == {f'{NAME}.seed0': 'finished', f'{NAME}.seed1': 'finished'}
    assert (first / 'train.log').read_text().count('$ ') == 2  # both starts, in one log
    for seed in (0, 1):
        resumed = load_file(root / f'{NAME}.seed{seed}' / 'model.safetensors')
        uninterrupted = load_file(reference / f'{NAME}.seed{seed}' / 'model.safetensors')
        for key in uninterrupted:
            torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-5, atol=1e-6, msg=key)


def test_failed_stopped_and_finished_runs_are_reported(finished_sweep, tmp_path, script_env, cifar10_dir):
    reference, _ = finished_sweep
    root = tmp_path / 'runs'
    shutil.copytree(reference / f'{NAME}.seed0', root / f'{NAME}.seed0')  # finished before: not trained again
    before = (root / f'{NAME}.seed0' / 'model.safetensors').read_bytes()
    settings = [s for s in TINY if not s.startswith('lr=')] + ['lr=0.1,1e30,0.05']
    result = subprocess.run(_sweep_command(root, [0], cifar10_dir, '--runs-at-once', '2', '--time-limit', '0.01',
                                           settings=settings), env=script_env, capture_output=True, text=True)
    assert result.returncode == 1 and '1 of 3 runs failed' in result.stderr
    statuses = _statuses(result.stdout)
    assert statuses[f'{NAME}.seed0'] == 'finished (before this sweep)'
    assert (root / f'{NAME}.seed0' / 'model.safetensors').read_bytes() == before
    diverged = statuses[f'{NAME.replace("lr=0.1", "lr=1e+30")}.seed0']
    assert diverged.startswith('failed (exit code 1): epoch 1: the run diverged (training loss nan')
    stopped = f'{NAME.replace("lr=0.1", "lr=0.05")}.seed0'
    assert statuses[stopped] == 'stopped at epoch 1 of 2, checkpointed (the same command continues it)'
    assert json.loads((root / stopped / 'checkpoints' / 'latest.json').read_text())['epochs_done'] == 1


FAKE_TRAIN = """
import json, pathlib, sys
run_dir = pathlib.Path(sys.argv[sys.argv.index('--output-dir') + 1])
run_dir.mkdir()
(run_dir / 'config.json').write_text(json.dumps({'config': {'epochs': 2}}))
print(sys.argv[sys.argv.index('--say') + 1])
"""


@pytest.mark.parametrize('last_line, started', [
    ('--time-limit 60 min: epoch 2 would not end in time; stopped after epoch 1, checkpointed', 1),
    ('--stop-after 1: stopped after epoch 1 of 2, checkpointed: continue with --resume', 3),
])
def test_no_run_starts_after_one_stopped_for_the_time_limit(last_line, started, sweep, tmp_path, monkeypatch):
    """Minutes may be left, but fewer than the epoch the stopped run could not fit: a new run would overrun them."""
    script = tmp_path / 'train.py'
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(sweep, 'TRAIN_SCRIPT', script)
    runs = [sweep.Run(f'm.seed{seed}', tmp_path / f'm.seed{seed}', ['--say', last_line]) for seed in range(3)]
    outcome = sweep.sweep(runs, runs_at_once=1, time_limit=60, cores=1, echo=lambda line: None)
    statuses = [status for _, failed, status in outcome if not failed]
    assert statuses[:started] == ['stopped at epoch 0 of 2, checkpointed (the same command continues it)'] * started
    assert statuses[started:] == ['not started: a run stopped for --time-limit 60 min'] * (3 - started)
    assert [run.dir.is_dir() for run in runs] == [True] * started + [False] * (3 - started)


def test_throughput_of_runs_at_once(script_env, tmp_path):
    docs = tmp_path / 'training.md'
    docs.write_text('before\n<!-- training-throughput:start -->\n<!-- training-throughput:end -->\n')
    result = run_script('sweep.py', '--throughput', '--models', MODEL, '--runs-at-once', '2', '--cores', '2',
                        '--warmup-steps', '1', '--seconds', '2', '--images', '128', '--readme', docs, '--',
                        '--batch-size', '32', '--data-on-device', env=script_env)
    section = f'<!-- training-throughput:start -->\n{result.stdout}<!-- training-throughput:end -->\n'
    assert docs.read_text() == f'before\n{section}'
    caption, _, header, _, row = result.stdout.strip().splitlines()
    assert 'batch 32' in caption and 'batches drawn on the device' in caption
    assert header.startswith('| model | runs at once | each run on | images/s per run | images/s summed |')
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[:2] == [f'`{MODEL}`', '2'] and '1 thread x 1 process, torch ' in cells[2]
    per_run = [float(v.replace(',', '')) for v in cells[3].split(' / ')]
    assert len(per_run) == 2 and min(per_run) > 0
    assert float(cells[4].replace(',', '')) == pytest.approx(sum(per_run), abs=2)
