"""Loading pretrained weights (local Hub folders, and the real Hub code paths against a local stand-in), what
loading refuses, and publishing."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import timm

from xsep_zoo.constants import CIFAR10_LABELS
from xsep_zoo.hub import WeightsError

from conftest import MODEL, ROOT, run_script

REPO = f'xsep-zoo/{MODEL}.cifar10'
TOKEN = 'hf_secret_token_for_tests_0123456789'

LOAD_AND_COMPARE = """
import sys, timm, torch, xsep_zoo
from safetensors.torch import load_file
model = timm.create_model(sys.argv[1], pretrained=True)
expected = load_file(sys.argv[2])
assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()), 'weights differ'
print('loaded', model.pretrained_cfg.get('architecture'))
"""


def _serve(exported, fake_hub):
    repo_dir = fake_hub.root / REPO
    repo_dir.mkdir(parents=True)
    for path in exported.iterdir():
        shutil.copy(path, repo_dir / path.name)
    return repo_dir


def _client_env(script_env, fake_hub, tmp_path, token=None):
    return {**script_env, **fake_hub.client_env(tmp_path / 'hf_home', token=token)}


# What `pip install xsep-zoo` (without the [train] extra) must be enough for: the extras' packages are made
# unimportable (None in sys.modules: `import` raises ImportError, importlib.util.find_spec finds nothing).
WITHOUT_TRAINING_EXTRAS = """
import sys
blocked = ('accelerate', 'datasets', 'pyarrow', 'pandas', 'matplotlib', 'onnx', 'onnxruntime', 'onnxscript')
sys.modules.update(dict.fromkeys(blocked))
import timm, torch, xsep_zoo
from xsep_zoo.hub import load_weights_file
model = timm.create_model(sys.argv[1], pretrained=True).eval()
expected = load_weights_file(sys.argv[2])
assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()), 'weights differ'
print(model(torch.zeros(1, 3, 32, 32)).shape)
"""


def test_loading_a_pretrained_model_needs_no_training_extra(script_env):
    folder = ROOT / 'hub_cards' / f'{MODEL}.cifar10'  # one of the zoo's published models
    env = dict(script_env, XSEP_ZOO_HUB_DIR=str(folder.parent))
    result = subprocess.run([sys.executable, '-c', WITHOUT_TRAINING_EXTRAS, MODEL, str(folder / 'model.safetensors')],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == 'torch.Size([1, 10])'


@pytest.mark.parametrize('name', [MODEL, f'{MODEL}.cifar10', f'hf-hub:{REPO}'])
def test_pretrained_downloads_from_the_hub(name, exported, fake_hub, script_env, tmp_path):
    _serve(exported, fake_hub)
    env = _client_env(script_env, fake_hub, tmp_path)  # an empty HF cache and no local Hub folder
    result = subprocess.run([sys.executable, '-c', LOAD_AND_COMPARE, name, str(exported / 'model.safetensors')],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f'loaded {MODEL}' in result.stdout
    fetched = [r.path for r in fake_hub.requests if r.method == 'GET' and '/resolve/' in r.path]
    assert f'/{REPO}/resolve/main/config.json' in fetched and f'/{REPO}/resolve/main/model.safetensors' in fetched


def test_altered_weights_on_the_hub_are_refused(exported, fake_hub, script_env, tmp_path):
    weights = _serve(exported, fake_hub) / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    env = _client_env(script_env, fake_hub, tmp_path)
    result = subprocess.run([sys.executable, '-c', LOAD_AND_COMPARE, MODEL, str(exported / 'model.safetensors')],
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert 'WeightsError' in result.stderr and 'model.safetensors: sha256' in result.stderr


def test_a_missing_repo_is_an_error_not_random_weights(fake_hub, script_env, tmp_path):
    env = _client_env(script_env, fake_hub, tmp_path)
    result = subprocess.run([sys.executable, '-c', LOAD_AND_COMPARE, MODEL, '/dev/null'],
                            env=env, capture_output=True, text=True)
    assert result.returncode != 0 and 'WeightsError' in result.stderr
    assert f'{REPO}: no local folder' in result.stderr and 'config.json could not be fetched from the Hub' in \
        result.stderr and 'RepositoryNotFoundError' in result.stderr


# edits of config.json that make timm build another network around the weights (or drop their head)
EDITS = {
    'num_classes': ('num_classes', lambda c: c.update(num_classes=100)),
    'architecture_argument': ('model_args', lambda c: c.setdefault('model_args', {}).update(padding='symmetric')),
    'architecture_name': ('architecture', lambda c: c.update(architecture='mobilenetv3_small_xsep_sympad_100')),
    'other_width': ('architecture', lambda c: c.update(architecture='mobilenetv3_small_xsep_100')),
}


def _edited(exported, root, edit):
    folder = shutil.copytree(exported, root / exported.name)
    config = json.loads((folder / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize('edit', EDITS)
def test_an_edited_config_is_refused_before_any_weight_loads(edit, exported, tmp_path, monkeypatch):
    field, change = EDITS[edit]
    folder = _edited(exported, tmp_path, change)
    monkeypatch.setenv('XSEP_ZOO_HUB_DIR', str(tmp_path))
    for name in (MODEL, f'local-dir:{folder}'):
        with pytest.raises(WeightsError, match=f'^{folder / "config.json"}: {field} is .* but the weights were '
                                               'exported for'):
            timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('script', ['eval', 'init_from', 'pretrained', 'hf_hub'])
def test_every_loading_path_refuses_an_edited_config_in_one_line(script, exported, fake_hub, tmp_path, script_env,
                                                                  cifar10_dir):
    hub_root = tmp_path / 'hub'
    folder = _edited(exported, hub_root, EDITS['num_classes'][1])
    env = dict(script_env, XSEP_ZOO_HUB_DIR=str(hub_root))
    train = ['--model', MODEL, '--epochs', '1', '--train-limit', '64', '--batch-size', '64',
             '--data-source', cifar10_dir, '--output-dir', tmp_path / 'run']
    if script == 'eval':
        result = run_script('eval.py', '--hub-folder', folder, '--data-source', cifar10_dir, env=env, check=False)
    elif script == 'init_from':
        result = run_script('train.py', *train, '--init-from', folder, env=env, check=False)
    elif script == 'pretrained':
        result = run_script('train.py', *train, '--pretrained', env=env, check=False)
    else:
        shutil.rmtree(fake_hub.root / REPO, ignore_errors=True)
        shutil.copytree(folder, fake_hub.root / REPO)
        result = subprocess.run([sys.executable, '-c', LOAD_AND_COMPARE, f'hf-hub:{REPO}', '/dev/null'],
                                env=_client_env(script_env, fake_hub, tmp_path), capture_output=True, text=True)
    assert result.returncode != 0
    assert 'config.json: num_classes is 100, but the weights were exported for 10' in result.stderr
    if script != 'hf_hub':  # the scripts print one line; a Python caller gets a WeightsError
        assert 'Traceback' not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'run').exists()


def test_a_folder_without_a_checksum_is_refused_unless_opted_out(exported, tmp_path, monkeypatch):
    folder = shutil.copytree(exported, tmp_path / exported.name)
    (folder / 'xsep_zoo.json').unlink()
    monkeypatch.setenv('XSEP_ZOO_HUB_DIR', str(tmp_path))
    monkeypatch.delenv('XSEP_ZOO_ALLOW_UNVERIFIED', raising=False)
    for name in (MODEL, f'local-dir:{folder}'):
        with pytest.raises(WeightsError, match='holds no xsep_zoo.json.* set XSEP_ZOO_ALLOW_UNVERIFIED=1'):
            timm.create_model(name, pretrained=True)
    monkeypatch.setenv('XSEP_ZOO_ALLOW_UNVERIFIED', '1')
    assert timm.create_model(f'local-dir:{folder}', pretrained=True).num_classes == 10


@pytest.mark.parametrize('damage', ['empty', 'not_json', 'missing'])
def test_a_damaged_or_missing_config_is_named(damage, exported, tmp_path, monkeypatch, script_env, cifar10_dir):
    folder = shutil.copytree(exported, tmp_path / exported.name)
    config = folder / 'config.json'
    if damage == 'missing':
        config.unlink()
    else:
        config.write_text('' if damage == 'empty' else '{"architecture": ')
    expected = f'{config}: not found' if damage == 'missing' else f'{config}: not valid JSON'
    monkeypatch.setenv('XSEP_ZOO_HUB_DIR', str(tmp_path))
    with pytest.raises(WeightsError, match=expected):
        timm.create_model(MODEL, pretrained=True)
    result = run_script('eval.py', '--hub-folder', folder, '--data-source', cifar10_dir, env=script_env, check=False)
    assert result.returncode != 0 and expected in result.stderr and 'Traceback' not in result.stderr


def test_weights_of_another_width_are_refused_in_one_line(exported):
    weights = exported / 'model.safetensors'
    with pytest.raises(WeightsError) as error:
        timm.create_model('mobilenetv3_small_xsep_100', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f'{weights} does not fit mobilenetv3_small_xsep_100 (') and 'another architecture or' \
        ' width' in message


def test_push_publishes_the_folder(exported, fake_hub, script_env, tmp_path):
    env = _client_env(script_env, fake_hub, tmp_path, token=TOKEN)
    result = run_script('push.py', exported, env=env)
    assert f'pushed {exported}' in result.stdout
    assert fake_hub.files(REPO) == {p.name: p.read_bytes() for p in exported.iterdir()}
    writes = [r for r in fake_hub.requests if r.method == 'POST' and not r.path.startswith('/api/validate-yaml')]
    assert [r.path.split('/')[-2] if 'models' in r.path else r.path for r in writes] == \
        ['/api/repos/create', 'preupload', 'commit']
    assert all(r.auth == 'Bearer' for r in writes)
    # pushing again to the existing repo works and changes nothing
    run_script('push.py', exported, env=env)
    assert fake_hub.files(REPO) == {p.name: p.read_bytes() for p in exported.iterdir()}
    # the token is never printed, logged or written
    assert TOKEN not in result.stdout + result.stderr
    assert not [p for p in (tmp_path / 'hf_home').rglob('*') if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_push_all_skips_a_folder_that_is_not_a_hub_folder_and_refuses_a_half_folder(exported, script_env, tmp_path):
    root, other = tmp_path / 'hub_root', tmp_path / 'hub_root' / 'notes'
    shutil.copytree(exported, root / exported.name)
    (other / 'drafts').mkdir(parents=True)
    (other / 'todo.txt').write_text('not a model')
    result = run_script('push.py', '--all', '--dry-run', '--hub-root', root, env=script_env)
    assert f'would push {root / exported.name} -> ' in result.stdout
    assert f'skipping {other}: not a Hub folder (holds none of model.safetensors, config.json, README.md)' \
        in result.stdout
    assert f'{other} ->' not in result.stdout
    (other / 'README.md').write_text('a card without weights')
    refused = run_script('push.py', '--all', '--dry-run', '--hub-root', root, env=script_env, check=False)
    assert refused.returncode != 0 and f'{other}: not a Hub folder, missing model.safetensors' in refused.stderr


def test_push_refuses_a_damaged_folder_and_a_missing_token(exported, fake_hub, script_env, tmp_path):
    folder = tmp_path / exported.name
    shutil.copytree(exported, folder)
    record = json.loads((folder / 'xsep_zoo.json').read_text())
    record['weights_sha256'] = '0' * 64
    (folder / 'xsep_zoo.json').write_text(json.dumps(record))
    env = _client_env(script_env, fake_hub, tmp_path, token=TOKEN)
    result = run_script('push.py', folder, env=env, check=False)
    assert result.returncode != 0 and 'differs from' in result.stderr
    result = run_script('push.py', exported, env=_client_env(script_env, fake_hub, tmp_path), check=False)
    assert result.returncode != 0 and 'no Hugging Face token' in result.stderr
    assert not (fake_hub.root / REPO).exists()


HUB_FOLDERS = sorted(p.parent for p in (ROOT / 'hub_cards').glob('*/config.json'))


@pytest.mark.parametrize('folder', HUB_FOLDERS, ids=lambda p: p.name)
def test_every_published_folder_loads_through_timm_and_transformers(folder):
    """What readers of timm Hub repos do: timm's local-dir: loader, and transformers' timm wrapper."""
    import torch
    from safetensors.torch import load_file
    from transformers import pipeline

    expected = load_file(folder / 'model.safetensors')
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    classifier = pipeline('image-classification', model=str(folder))
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    answers = classifier(image, top_k=10)
    assert sorted(a['label'] for a in answers) == sorted(CIFAR10_LABELS)  # the class names, all of them
    wrapped = classifier.model.timm_model
    assert all(torch.equal(wrapped.state_dict()[k], v) for k, v in expected.items())


def _python_blocks(markdown: str) -> list:
    return re.findall(r'```python\n(.*?)```', markdown, flags=re.S)


@pytest.mark.parametrize('page', ['hub_cards/mobilenetv3_small_xsep_050.cifar10/README.md', 'README.md'])
def test_the_snippets_run(page, tmp_path, script_env):
    """Every Python snippet of the README and of a card runs as printed (the cards share one template)."""
    blocks = _python_blocks((ROOT / page).read_text())
    assert len(blocks) == (3 if page.startswith('hub_cards') else 1)
    PIL.Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(tmp_path / 'image.png')
    env = {k: v for k, v in script_env.items() if k != 'XSEP_ZOO_HUB_DIR'}  # the repository's hub_cards/
    for block in blocks:
        result = subprocess.run([sys.executable, '-c', block], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f'{block}\n{result.stderr[-2000:]}'
        assert result.stdout.strip()
