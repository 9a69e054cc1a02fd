"""Training, resuming after SIGKILL, evaluation and export, on a slice of the small CIFAR-10 the tests make.

The scripts run as the user runs them (subprocesses of `python scripts/...`); one short run is
shared by the tests that only read it.
"""
import dataclasses
import json
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from xsep_zoo.data import DATASETS, CROP_PADDING, ImageTensors, normalize
from xsep_zoo.engine import DeviceBatches
from xsep_zoo.hub import WeightsError, load_matching_state_dict, read_record, sha256_file

from conftest import MODEL, ROOT, TRAIN_ARGS, load_script, run_script

x86_only = pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'),
                              reason='torch flushes subnormals on x86')


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines()]


def test_two_epochs_on_a_slice(trained_run):
    log = _log(trained_run)
    assert [e['epoch'] for e in log] == [1, 2]
    assert log[1]['train_loss'] < log[0]['train_loss']
    assert all(e['test_count'] == 256 and 0 <= e['test_top1'] <= e['test_top5'] <= 100 for e in log)
    assert all(e['images_per_s'] > 0 and e['seconds'] > 0 and e['lr'] >= 0 for e in log)
    assert json.loads((trained_run / 'checkpoints' / 'latest.json').read_text()) == \
        {'checkpoint': 'epoch-0002', 'epochs_done': 2}
    assert (trained_run / 'checkpoints' / 'epoch-0002' / 'model.safetensors').is_file()
    assert not list((trained_run / 'checkpoints').glob('epoch-0001'))  # only the latest is kept
    record = json.loads((trained_run / 'config.json').read_text())
    assert record['config']['lr'] == 0.1 and record['config']['momentum'] == 0.9  # flag, then the paper's recipe
    assert record['config']['weight_decay'] == 6e-5 and record['command'].startswith('python ')
    assert (trained_run / 'model.safetensors').is_file()


def test_an_existing_run_is_not_overwritten(trained_run, script_env):
    before = sha256_file(trained_run / 'model.safetensors')
    result = run_script('train.py', *TRAIN_ARGS, '--output-dir', trained_run, env=script_env, check=False)
    assert result.returncode != 0 and 'exists; pass --resume' in result.stderr
    assert sha256_file(trained_run / 'model.safetensors') == before


def _kill_and_resume(args, run_dir, kill_when, env):
    """Start a run, SIGKILL it at `kill_when`, then resume it to the end."""
    proc = subprocess.Popen([sys.executable, str(ROOT / 'scripts' / 'train.py'), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # mid_epoch: once epoch 1 is checkpointed, 0.3 s into epoch 2; saving: as soon as a checkpoint is being written
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_when == 'saving' and list(run_dir.glob('checkpoints/.tmp-epoch-*')):
            break
        if kill_when == 'mid_epoch' and (run_dir / 'checkpoints' / 'latest.json').is_file():
            time.sleep(0.3)
            break
        time.sleep(0.005)
    assert proc.poll() is None, 'the run ended before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / 'model.safetensors').exists()
    run_script('train.py', '--output-dir', run_dir, '--resume', env=env)
    assert [e['epoch'] for e in _log(run_dir)] == [1, 2]


def _assert_same_weights(run_dir, reference_dir):
    resumed, reference = load_file(run_dir / 'model.safetensors'), load_file(reference_dir / 'model.safetensors')
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize('kill_when', ['mid_epoch', 'saving'])
def test_resume_after_sigkill_gives_the_same_weights(kill_when, trained_run, tmp_path, script_env, cifar10_dir):
    run_dir = tmp_path / 'killed'
    _kill_and_resume([*TRAIN_ARGS, '--data-source', cifar10_dir, '--output-dir', run_dir], run_dir, kill_when,
                     script_env)
    _assert_same_weights(run_dir, trained_run)


@pytest.mark.parametrize('stop', [['--time-limit', '0.01'], ['--stop-after', '1']])  # 0.6 s: one epoch, then stop
def test_a_stopped_run_is_checkpointed_and_resume_finishes_the_same_run(stop, trained_run, tmp_path, script_env,
                                                                        cifar10_dir):
    run_dir = tmp_path / 'limited'
    args = [*TRAIN_ARGS, '--data-source', cifar10_dir, '--output-dir', run_dir]
    stopped = run_script('train.py', *args, *stop, env=script_env)
    assert 'stopped after epoch 1' in stopped.stdout
    assert [e['epoch'] for e in _log(run_dir)] == [1] and not (run_dir / 'model.safetensors').exists()
    assert json.loads((run_dir / 'checkpoints' / 'latest.json').read_text())['epochs_done'] == 1
    # as a run recorded before the choice of batches from the device existed: it continues from a loader
    record = json.loads((run_dir / 'config.json').read_text())
    assert record['config'].pop('data_on_device') is False  # off on the CPU unless asked
    (run_dir / 'config.json').write_text(json.dumps(record))
    run_script('train.py', '--output-dir', run_dir, '--resume', '--time-limit', '60', env=script_env)
    assert [e['epoch'] for e in _log(run_dir)] == [1, 2]
    resumed, reference = load_file(run_dir / 'model.safetensors'), load_file(trained_run / 'model.safetensors')
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


def test_a_run_being_trained_cannot_be_resumed_beside_it(tmp_path, script_env, cifar10_dir):
    run_dir = tmp_path / 'busy'
    args = [*TRAIN_ARGS, '--data-source', cifar10_dir, '--output-dir', run_dir]
    proc = subprocess.Popen([sys.executable, str(ROOT / 'scripts' / 'train.py'), *map(str, args)], env=script_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / 'config.json').is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, 'the run ended before a second one could be started beside it'
        second = run_script('train.py', '--output-dir', run_dir, '--resume', env=script_env, check=False)
        assert second.returncode != 0 and f'being trained by another process (pid {proc.pid})' in second.stderr
    finally:
        proc.kill()
        proc.wait()


def test_resume_refuses_other_settings(trained_run, script_env):
    result = run_script('train.py', '--output-dir', trained_run, '--resume', '--lr', '0.2', env=script_env, check=False)
    assert result.returncode != 0 and "'lr': (0.1, 0.2)" in result.stderr


def test_export_writes_a_hub_folder(exported, trained_run, cifar10_dir):
    assert sorted(p.name for p in exported.iterdir()) == \
        ['README.md', 'config.json', 'curves.png', 'log.jsonl', 'model.safetensors', 'xsep_zoo.json']
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == MODEL and config['num_classes'] == 10
    assert config['label_names'][:2] == ['airplane', 'automobile'] and 'model_args' not in config  # timm's layout
    fields = {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    assert set(config['pretrained_cfg']) <= fields
    results = read_record(exported)
    assert results['weights_sha256'] == sha256_file(exported / 'model.safetensors')
    assert (exported / 'log.jsonl').read_text() == (trained_run / 'log.jsonl').read_text()
    assert results['count'] == 256 and results['dataset'] == 'cifar10'
    ranks = results['test_ranks']  # where each test image's true class ranked: 0-4, or 5 outside the top 5
    assert len(ranks) == 256 and set(ranks) <= set('012345')
    assert (100.0 * ranks.count('0') / 256, 100.0 * sum(r < '5' for r in ranks) / 256) == \
        (results['top1'], results['top5'])
    exported_sd, final_sd = load_file(exported / 'model.safetensors'), load_file(trained_run / 'model.safetensors')
    assert all(torch.equal(exported_sd[k], final_sd[k]) for k in final_sd)
    card = (exported / 'README.md').read_text()
    front = card.split('---')[1]
    assert 'library_name: timm' in front and 'pipeline_tag: image-classification' in front
    assert 'model-index' in front and f"value: {round(results['top1'], 2)}" in front
    # a local copy is not the Hub dataset: the card names it and does not list uoft-cs/cifar10 as its data
    assert 'datasets:' not in front and 'not the lossless `uoft-cs/cifar10`' in card
    assert 'synthetic JPEG images' in card and str(cifar10_dir) not in card and '--data-source $DATA' in card
    assert f"| {results['top1']:.2f} | {results['top5']:.2f} |" in card
    assert 'import xsep_zoo' in card and 'scripts/train.py' in card and 'scripts/eval.py' in card
    assert f'python scripts/train.py --model {MODEL}' in card  # run from the repository root, wherever it is
    assert 'arXiv:2002.12046' in card or '2002.12046' in card
    log = _log(trained_run)
    assert results['trained_on'] == [dict(machine=log[0]['machine'], epochs=[1, 2],
                                          seconds=pytest.approx(log[0]['seconds'] + log[1]['seconds']))]
    assert f"2 epochs, {results['train_seconds'] / 3600:.2f} h on {log[0]['machine'].split(', ')[0]}, with" in card


def _export_copy(trained_run, tmp_path, script_env, cifar10_dir, edit_log):
    """Export a copy of the shared run whose log lines `edit_log` rewrote; returns (results, card)."""
    run_dir = tmp_path / trained_run.name
    shutil.copytree(trained_run, run_dir)
    log = [edit_log(entry) for entry in _log(run_dir)]
    (run_dir / 'log.jsonl').write_text(''.join(json.dumps(entry) + '\n' for entry in log))
    run_script('export.py', run_dir, '--hub-root', tmp_path / 'hub', '--data-source', cifar10_dir,
               '--test-limit', '256', env=script_env)
    folder = tmp_path / 'hub' / f'{MODEL}.cifar10'
    return read_record(folder), (folder / 'README.md').read_text()


def test_every_epoch_logs_its_machine(trained_run):
    assert all(e['machine'] and 'runs_at_once' not in e for e in _log(trained_run))


@x86_only
def test_training_on_the_cpu_flushes_subnormal_floats(trained_run):
    assert all(e['flush_denormal'] is True for e in _log(trained_run))


@x86_only
@pytest.mark.parametrize('pool_first', [False, True])
def test_flush_subnormals_holds_in_every_thread_only_when_called_before_the_pool_starts(pool_first):
    code = ('import torch; torch.set_num_threads(2)\n'
            + ('(torch.ones(1 << 22) * 2.0).sum()\n' if pool_first else '')
            + 'from xsep_zoo.engine import flush_subnormals; print(flush_subnormals())')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(not pool_first)


def test_export_names_each_machine_a_resumed_run_was_trained_on(trained_run, tmp_path, script_env, cifar10_dir):
    def first_epoch_on_a_gpu_as_older_runs_logged_it(entry):
        gpu = {'machine': '1 x Some GPU, torch 9', 'runs_at_once': 2, 'flush_denormal': False}
        return {**entry, **gpu} if entry['epoch'] == 1 else entry

    results, card = _export_copy(trained_run, tmp_path, script_env, cifar10_dir,
                                 first_epoch_on_a_gpu_as_older_runs_logged_it)
    log = _log(trained_run)
    assert [(s['machine'], s['epochs']) for s in results['trained_on']] == \
        [('1 x Some GPU, torch 9', [1, 1]), (log[1]['machine'], [2, 2])]
    assert 'runs_at_once' not in results
    assert f"h on Some GPU; {log[1]['machine'].split(', ')[0]}, with" in card
    assert 'at once' not in card and 'subnormal' not in card


def test_eval_of_export_equals_eval_of_checkpoint(exported, trained_run, tmp_path, script_env, cifar10_dir):
    common = ['--data-source', cifar10_dir, '--limit', '256']
    run_script('eval.py', '--hub-folder', exported, *common, '--output', tmp_path / 'hub.json', env=script_env)
    run_script('eval.py', '--checkpoint', trained_run, *common, '--output', tmp_path / 'run.json', env=script_env)
    run_script('eval.py', '--checkpoint', trained_run / 'checkpoints' / 'epoch-0002', *common,
               '--output', tmp_path / 'ckpt.json', env=script_env)
    hub, run, ckpt = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('hub', 'run', 'ckpt'))
    keys = ('top1', 'top5', 'loss', 'correct1', 'correct5', 'count')
    assert [hub[k] for k in keys] == [run[k] for k in keys] == [ckpt[k] for k in keys]
    card = read_record(exported)
    assert (card['top1'], card['top5'], card['count']) == (hub['top1'], hub['top5'], hub['count'])


def test_eval_of_the_inference_form_equals_the_plain_eval(exported, tmp_path, script_env, cifar10_dir):
    common = ['--hub-folder', exported, '--data-source', cifar10_dir, '--limit', '256']
    run_script('eval.py', *common, '--output', tmp_path / 'plain.json', env=script_env)
    run_script('eval.py', *common, '--reparameterize', '--output', tmp_path / 'fused.json', env=script_env)
    plain, fused = (json.loads((tmp_path / f'{n}.json').read_text()) for n in ('plain', 'fused'))
    assert fused['reparameterized'] and not plain['reparameterized']
    keys = ('correct1', 'correct5', 'count')
    assert [fused[k] for k in keys] == [plain[k] for k in keys]
    assert fused['loss'] == pytest.approx(plain['loss'], abs=1e-5)


def test_compile_is_a_speed_setting_free_on_resume(trained_run, script_env):
    before = (trained_run / 'model.safetensors').read_bytes()
    run_script('train.py', '--output-dir', trained_run, '--resume', '--compile', 'default', env=script_env)
    assert (trained_run / 'model.safetensors').read_bytes() == before  # a finished run: nothing left to train
    assert 'compile' not in json.loads((trained_run / 'config.json').read_text())['config']


def test_pretrained_loads_the_local_hub_folder(exported, monkeypatch):
    monkeypatch.setenv('XSEP_ZOO_HUB_DIR', str(exported.parent))
    model = timm.create_model(MODEL, pretrained=True)
    expected = load_file(exported / 'model.safetensors')
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    via_dir = timm.create_model(f'local-dir:{exported}', pretrained=True)
    assert all(torch.equal(via_dir.state_dict()[k], v) for k, v in expected.items())
    # a new head for another number of classes, the rest pretrained
    model = timm.create_model(MODEL, pretrained=True, num_classes=3)
    assert model.classifier.out_features == 3
    assert torch.equal(model.state_dict()['conv_stem.weight'], expected['conv_stem.weight'])


def _copy(folder, dest):
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


@pytest.mark.parametrize('damage', ['truncated', 'flipped_byte'])
def test_damaged_weights_are_refused(damage, exported, tmp_path, monkeypatch):
    folder = _copy(exported, tmp_path / exported.name)
    weights = folder / 'model.safetensors'
    data = weights.read_bytes()
    flipped = data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]
    weights.write_bytes(data[: len(data) // 2] if damage == 'truncated' else flipped)
    monkeypatch.setenv('XSEP_ZOO_HUB_DIR', str(tmp_path))
    for name in (MODEL, f'local-dir:{folder}'):
        with pytest.raises(WeightsError, match=f'{weights}: sha256 .* differs'):
            timm.create_model(name, pretrained=True)


def test_unreadable_safetensors_file_is_named(tmp_path, trained_run, script_env, cifar10_dir):
    bad = tmp_path / 'broken.safetensors'
    bad.write_bytes((trained_run / 'model.safetensors').read_bytes()[:100])
    result = run_script('eval.py', '--checkpoint', bad, '--model', MODEL, '--dataset', 'cifar10',
                        '--data-source', cifar10_dir, env=script_env, check=False)
    assert result.returncode != 0 and f'{bad}: not a readable safetensors file' in result.stderr


def test_checkpoint_of_another_architecture_is_refused(trained_run, script_env, cifar10_dir):
    result = run_script('eval.py', '--checkpoint', trained_run, '--model', 'mobilenetv3_small_dw_100',
                        '--data-source', cifar10_dir, env=script_env, check=False)
    assert result.returncode != 0
    assert 'does not fit' in result.stderr and 'another architecture' in result.stderr


def test_export_refuses_an_existing_folder(exported, trained_run, script_env, cifar10_dir):
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    result = run_script('export.py', trained_run, '--hub-root', exported.parent, '--data-source', cifar10_dir,
                        '--test-limit', '256', env=script_env, check=False)
    assert result.returncode != 0 and 'exists; pass --overwrite' in result.stderr
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before


@pytest.mark.parametrize('start', ['--pretrained', '--init-from'])
def test_fine_tuning_starts_from_the_given_weights(start, exported, tmp_path, script_env, cifar10_dir):
    # lr 1e-30 keeps every weight where it started (its steps are below float32 resolution; BN statistics still
    # move), so the start is visible at the end
    args = [*TRAIN_ARGS, '--epochs', '1', '--lr', '1e-30', '--train-limit', '128', '--data-source', cifar10_dir,
            '--output-dir', tmp_path / 'ft']
    args += ['--pretrained'] if start == '--pretrained' else ['--init-from', exported]
    env = dict(script_env, XSEP_ZOO_HUB_DIR=str(exported.parent))
    run_script('train.py', *args, env=env)
    start_sd, final_sd = load_file(exported / 'model.safetensors'), load_file(tmp_path / 'ft' / 'model.safetensors')
    for key in ('conv_stem.weight', 'blocks.2.1.conv_dw.conv_2x2.weight', 'classifier.weight'):
        assert torch.equal(start_sd[key], final_sd[key]), key


def test_new_head_when_the_classes_differ(exported):
    state = load_file(exported / 'model.safetensors')
    model = timm.create_model(MODEL, num_classes=7)
    skipped = load_matching_state_dict(model, state, 'the export', new_head_ok=True)
    assert skipped == ['classifier.bias', 'classifier.weight']
    assert torch.equal(model.state_dict()['conv_stem.weight'], state['conv_stem.weight'])
    with pytest.raises(WeightsError,
                       match=r'the export does not fit .*other shape: classifier.bias, classifier.weight'):
        load_matching_state_dict(timm.create_model(MODEL, num_classes=7), state, 'the export')
    with pytest.raises(WeightsError, match='missing: .*unexpected: '):
        load_matching_state_dict(timm.create_model('mobilenetv3_small_dw_050'), state, 'the export', new_head_ok=True)


def test_two_processes_shard_the_data_and_count_the_test_set_exactly(tmp_path, script_env, cifar10_dir):
    """DDP as on several GPUs, here with two CPU processes (gloo): same script, no code change."""
    run_dir = tmp_path / 'ddp'
    args = [*TRAIN_ARGS, '--epochs', '1', '--test-limit', '250', '--data-source', cifar10_dir, '--output-dir', run_dir]
    env = dict(script_env, ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1')
    result = subprocess.run([str(Path(sys.executable).with_name('torchrun')), '--standalone', '--nproc_per_node', '2',
                             str(ROOT / 'scripts' / 'train.py'), *map(str, args)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '512 train / 250 test images, 8 steps per epoch' in result.stdout  # 2 x 32 images per step
    assert _log(run_dir)[0]['test_count'] == 250  # 125 per process, none padded in or dropped
    record = json.loads((run_dir / 'config.json').read_text())
    assert record['num_processes'] == 2 and record['command'].startswith('accelerate launch --num_processes 2 ')
    assert (run_dir / 'checkpoints' / 'epoch-0001' / 'random_states_1.pkl').is_file()


# --- batches drawn on the device (the default on CUDA; here on the CPU, where it is asked for) -------

@pytest.fixture(scope='session')
def trained_on_device(tmp_path_factory, script_env, cifar10_dir):
    run_dir = tmp_path_factory.mktemp('runs') / 'on_device'
    run_script('train.py', *TRAIN_ARGS, '--data-on-device', '--data-source', cifar10_dir, '--output-dir', run_dir,
               env=script_env)
    return run_dir


def _indexed_images(n: int, seed: int = 0) -> ImageTensors:
    """Random images whose label is their index, so a batch tells which images it holds."""
    generator = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(n))


def test_device_batches_are_crops_and_flips_of_their_own_images():
    spec, data = DATASETS['cifar10'], _indexed_images(40)
    padded = torch.nn.functional.pad(data.images, (CROP_PADDING,) * 4)
    shifts = range(2 * CROP_PADDING + 1)
    seen, flips = [], 0
    for inputs, labels in DeviceBatches(data, spec, batch_size=8, device='cpu', seed=1).epoch(0):
        assert inputs.shape == (8, 3, 32, 32) and inputs.dtype == torch.float32
        for image, index in zip(inputs, labels.tolist()):
            crops = [padded[index, :, y:y + 32, x:x + 32] for y in shifts for x in shifts]
            matches = [flip for crop in crops for flip in (0, 1)
                       if torch.equal(normalize((crop.flip(-1) if flip else crop)[None], spec)[0], image)]
            assert len(matches) == 1, f'image {index} is not one crop of itself'
            flips += matches[0]
        seen += labels.tolist()
    assert sorted(seen) == list(range(40)) and seen != sorted(seen)  # every image once, shuffled
    assert 5 <= flips <= 35


def test_device_batches_follow_the_seed_and_split_each_step_between_processes():
    spec, data = DATASETS['cifar10'], _indexed_images(100)
    single = DeviceBatches(data, spec, batch_size=16, device='cpu', seed=2)
    ranks = [DeviceBatches(data, spec, batch_size=8, device='cpu', seed=2, rank=r, world=2) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == 6  # 100 // 16: the 4 images that make no full step are left out
    epoch0 = list(single.epoch(0))
    assert all(torch.equal(a, b) for (x, y), (u, v) in zip(epoch0, single.epoch(0)) for a, b in ((x, u), (y, v)))
    assert not torch.equal(torch.cat([y for _, y in epoch0]), torch.cat([y for _, y in single.epoch(1)]))
    # process r takes rows r*8..(r+1)*8 of each step of the single process: the same images, the same crops
    for (inputs, labels), parts in zip(epoch0, zip(*(r.epoch(0) for r in ranks))):
        assert torch.equal(torch.cat([x for x, _ in parts]), inputs)
        assert torch.equal(torch.cat([y for _, y in parts]), labels)


def test_a_step_on_the_device_path_reads_nothing_back_from_the_device(tmp_path, monkeypatch):
    """No .item(), bool(), float() or .tolist() within an epoch: each would make the host wait for a GPU."""
    from accelerate import Accelerator
    train = load_script('train')
    accelerator, spec = Accelerator(cpu=True), DATASETS['cifar10']

    def steps(on_device: bool):
        config = train.resolve_config(train.parse_args(
            ['--model', MODEL, '--batch-size', '16', '--clip-grad', '1', '--ema-decay', '0.5',
             '--data-on-device' if on_device else '--no-data-on-device', '--output-dir', str(tmp_path / 'new')]))
        model = train.create_model(config, spec, accelerator)
        images = _indexed_images(48).images
        data = ImageTensors(images, torch.arange(48) % spec.num_classes)
        model, optimizer, batches, _ = train.prepare_training(config, model, data, None, spec, accelerator)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        ema = timm.utils.ModelEmaV3(model, decay=config['ema_decay'])

        def read_back(*args, **kwargs):
            raise AssertionError('a value was read back from the device within an epoch')
        with monkeypatch.context() as patched:
            for name in ('item', 'tolist', 'numpy', '__bool__', '__float__', '__int__'):
                patched.setattr(torch.Tensor, name, read_back)
            return train.train_steps(batches.epoch(0), model, optimizer, scheduler, accelerator, config, ema=ema)

    loss_sum, seen = steps(on_device=True)
    assert seen == 48 and loss_sum.isfinite()
    with pytest.raises(AssertionError, match='read back'):  # the loader path lists its indices on the host
        steps(on_device=False)


def test_batches_from_the_device_are_recorded_and_train(trained_run, trained_on_device):
    assert json.loads((trained_run / 'config.json').read_text())['config']['data_on_device'] is False  # CPU default
    assert json.loads((trained_on_device / 'config.json').read_text())['config']['data_on_device'] is True
    log = _log(trained_on_device)
    assert [e['epoch'] for e in log] == [1, 2] and log[1]['train_loss'] < log[0]['train_loss']
    on_device, from_loader = (load_file(d / 'model.safetensors') for d in (trained_on_device, trained_run))
    assert not torch.equal(on_device['conv_stem.weight'], from_loader['conv_stem.weight'])  # other draws


def test_resume_after_sigkill_on_the_device_path_gives_the_same_weights(trained_on_device, tmp_path, script_env,
                                                                         cifar10_dir):
    run_dir = tmp_path / 'killed'
    _kill_and_resume([*TRAIN_ARGS, '--data-on-device', '--data-source', cifar10_dir, '--output-dir', run_dir],
                     run_dir, 'mid_epoch', script_env)
    _assert_same_weights(run_dir, trained_on_device)
    result = run_script('train.py', '--output-dir', run_dir, '--resume', '--no-data-on-device', env=script_env,
                        check=False)
    assert result.returncode != 0 and "'data_on_device': (True, False)" in result.stderr


def test_two_processes_take_their_own_parts_of_the_device_drawn_order(tmp_path, script_env, cifar10_dir):
    """DDP with batches drawn on the device, as on several GPUs: here two CPU processes (gloo)."""
    run_dir = tmp_path / 'ddp'
    args = [*TRAIN_ARGS, '--epochs', '1', '--test-limit', '250', '--data-on-device', '--data-source', cifar10_dir,
            '--output-dir', run_dir]
    env = dict(script_env, ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1')
    result = subprocess.run([str(Path(sys.executable).with_name('torchrun')), '--standalone', '--nproc_per_node', '2',
                             str(ROOT / 'scripts' / 'train.py'), *map(str, args)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '512 train / 250 test images, 8 steps per epoch, epochs 1..1, batches drawn on the device' in result.stdout
    assert _log(run_dir)[0]['test_count'] == 250
    assert (run_dir / 'checkpoints' / 'epoch-0001' / 'random_states_1.pkl').is_file()


def test_optional_recipe_flags(tmp_path, script_env, cifar10_dir):
    """EMA, bf16 autocast, label smoothing, clipping and NCHW all run; the exported weights are the EMA ones."""
    run_dir = tmp_path / 'flags'
    args = [*TRAIN_ARGS, '--epochs', '1', '--train-limit', '256', '--test-limit', '64', '--ema-decay', '0.5',
            '--mixed-precision', 'bf16', '--label-smoothing', '0.1', '--clip-grad', '1.0', '--no-channels-last',
            '--data-source', cifar10_dir, '--output-dir', run_dir]
    run_script('train.py', *args, env=script_env)
    config = json.loads((run_dir / 'config.json').read_text())['config']
    assert (config['ema_decay'], config['mixed_precision'], config['channels_last']) == (0.5, 'bf16', False)
    final = load_file(run_dir / 'model.safetensors')
    model_state = load_file(run_dir / 'checkpoints' / 'epoch-0001' / 'model.safetensors')
    key = 'conv_stem.weight'
    assert not torch.equal(final[key], model_state[key])  # EMA weights (timm's EMA copies for 2 steps, then decays)


def _tree(folder):
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


class _Planted:
    """A pickle that creates a file when unpickled: proof of code run from a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


@pytest.mark.parametrize('target', ['custom_checkpoint_0.pkl', 'random_states_0.pkl', 'optimizer.bin'])
def test_resume_runs_no_code_from_a_planted_pickle(target, trained_run, tmp_path, script_env):
    import pickle
    run_dir, marker = tmp_path / 'run', tmp_path / 'code-ran'
    shutil.copytree(trained_run, run_dir)
    (run_dir / 'checkpoints' / 'epoch-0002' / target).write_bytes(pickle.dumps(_Planted(marker)))
    before = _tree(run_dir)
    result = run_script('train.py', '--output-dir', run_dir, '--resume', env=script_env, check=False)
    assert not marker.exists()
    assert result.returncode != 0 and f'--resume: ' in result.stderr and 'Traceback' not in result.stderr
    message = 'pickled objects that would run code' if target.startswith('custom') else 'cannot restore'
    assert message in result.stderr and 'nothing was' in result.stderr.lower()
    assert _tree(run_dir) == before


def test_checkpoints_hold_no_pickled_objects(trained_run, tmp_path, script_env, cifar10_dir):
    run_dir = tmp_path / 'ema'
    run_script('train.py', *TRAIN_ARGS, '--epochs', '1', '--train-limit', '128', '--ema-decay', '0.5',
               '--data-source', cifar10_dir, '--output-dir', run_dir, env=script_env)
    checkpoint = run_dir / 'checkpoints' / 'epoch-0001'
    assert sorted(p.name for p in checkpoint.iterdir()) == \
        ['ema.safetensors', 'model.safetensors', 'optimizer.bin', 'progress.json', 'random_states_0.pkl']


@pytest.mark.parametrize('damage', ['no_checkpoints', 'damaged_pointer', 'truncated_weights', 'truncated_optimizer',
                                    'hub_folder'])
def test_resume_refuses_what_it_cannot_continue_and_changes_nothing(damage, trained_run, exported, tmp_path,
                                                                     script_env):
    run_dir = tmp_path / 'run'
    shutil.copytree(exported if damage == 'hub_folder' else trained_run, run_dir)
    checkpoint = run_dir / 'checkpoints' / 'epoch-0002'
    if damage == 'no_checkpoints':
        shutil.rmtree(run_dir / 'checkpoints')
    elif damage == 'damaged_pointer':
        (run_dir / 'checkpoints' / 'latest.json').write_text('{"checkpoint": ')
    elif damage.startswith('truncated'):
        victim = checkpoint / ('model.safetensors' if damage == 'truncated_weights' else 'optimizer.bin')
        victim.write_bytes(victim.read_bytes()[:200])
    before = _tree(run_dir)
    result = run_script('train.py', '--output-dir', run_dir, '--resume', env=script_env, check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    expected = {'no_checkpoints': 'has trained 2 epochs but holds no checkpoint',
                'damaged_pointer': f'{run_dir / "checkpoints" / "latest.json"} is damaged (JSONDecodeError', 'truncated_weights': f'cannot restore {checkpoint}',
                'truncated_optimizer': f'cannot restore {checkpoint}', 'hub_folder': 'is not a training run'}[damage]
    assert expected in result.stderr
    assert _tree(run_dir) == before  # the log is not truncated, nothing is added


@pytest.mark.parametrize('flag, value, message', [
    ('--epochs', '0', '--epochs 0: must be at least 1'),
    ('--epochs', '-3', '--epochs -3: must be at least 1'),
    ('--warmup-epochs', '-1', '--warmup-epochs -1: must be 0 or more'),
    ('--lr', '0', '--lr 0.0: must be a positive number'),
    ('--lr', 'nan', '--lr nan: must be a positive number'),
    ('--batch-size', '0', '--batch-size 0: must be at least 1'),
    ('--momentum', '5', '--momentum 5.0: must be in [0, 1)'),
    ('--drop-rate', '1', '--drop-rate 1.0: must be in [0, 1)'),
    ('--batch-size', '1024', '512 training images make no full batch of --batch-size 1024'),
    ('--model', 'mobilenetv3_small_xsep_100.nosuchtag', 'mobilenetv3_small_xsep_100.nosuchtag: no such published'),
])
def test_impossible_settings_are_refused_before_anything_is_created(flag, value, message, tmp_path, script_env,
                                                                     cifar10_dir):
    run_dir = tmp_path / 'run'
    extra = ['--pretrained'] if flag == '--model' else []
    result = run_script('train.py', *TRAIN_ARGS, flag, value, *extra, '--data-source', cifar10_dir,
                        '--output-dir', run_dir, env=script_env, check=False)
    assert result.returncode != 0 and message in result.stderr and 'Traceback' not in result.stderr
    assert not run_dir.exists()


def test_a_diverged_run_stops_at_once_and_writes_no_weights(tmp_path, script_env, cifar10_dir):
    run_dir = tmp_path / 'diverged'
    result = run_script('train.py', *TRAIN_ARGS, '--train-limit', '128', '--lr', '1e30', '--data-source',
                        cifar10_dir, '--output-dir', run_dir, env=script_env, check=False)
    assert result.returncode != 0 and 'epoch 1: the run diverged (training loss nan' in result.stderr
    assert not (run_dir / 'model.safetensors').exists() and not (run_dir / 'checkpoints').exists()
    assert not (run_dir / 'log.jsonl').exists()


def test_export_refuses_weights_that_are_not_finite(trained_run, tmp_path, script_env, cifar10_dir):
    from safetensors.torch import save_file
    run_dir, hub_root = tmp_path / 'nan', tmp_path / 'hub'
    shutil.copytree(trained_run, run_dir)
    state = load_file(run_dir / 'model.safetensors')
    state['classifier.bias'][0] = float('nan')
    save_file(state, run_dir / 'model.safetensors')
    result = run_script('export.py', run_dir, '--hub-root', hub_root, '--data-source', cifar10_dir,
                        '--test-limit', '64', env=script_env, check=False)
    assert result.returncode != 0 and '1 tensors hold NaN or infinite values (classifier.bias)' in result.stderr
    assert not hub_root.exists() or not any(hub_root.iterdir())
