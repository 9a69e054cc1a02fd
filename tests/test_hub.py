"""The real Hub code paths against a local stand-in: downloading pretrained weights, and publishing."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import MODEL, run_script

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
    assert result.returncode != 0 and 'RepositoryNotFoundError' in result.stderr


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


def test_push_all_skips_a_run_still_training_and_refuses_a_half_folder(exported, script_env, tmp_path):
    root, unfinished = tmp_path / 'hub_root', tmp_path / 'hub_root' / f'{MODEL}.cifar10_e400'
    shutil.copytree(exported, root / exported.name)
    (unfinished / 'last-checkpoint' / 'checkpoints').mkdir(parents=True)
    result = run_script('push.py', '--all', '--dry-run', '--hub-root', root, env=script_env)
    assert f'would push {root / exported.name} -> ' in result.stdout
    assert f'skipping {unfinished}: it holds only last-checkpoint/' in result.stdout
    assert f'{unfinished} ->' not in result.stdout
    (unfinished / 'README.md').write_text('a card without weights')
    refused = run_script('push.py', '--all', '--dry-run', '--hub-root', root, env=script_env, check=False)
    assert refused.returncode != 0 and f'{unfinished}: not a Hub folder, missing model.safetensors' in refused.stderr


def test_push_refuses_a_damaged_folder_and_a_missing_token(exported, fake_hub, script_env, tmp_path):
    folder = tmp_path / exported.name
    shutil.copytree(exported, folder)
    config = json.loads((folder / 'config.json').read_text())
    config['weights_sha256'] = '0' * 64
    (folder / 'config.json').write_text(json.dumps(config))
    env = _client_env(script_env, fake_hub, tmp_path, token=TOKEN)
    result = run_script('push.py', folder, env=env, check=False)
    assert result.returncode != 0 and 'differs from' in result.stderr
    result = run_script('push.py', exported, env=_client_env(script_env, fake_hub, tmp_path), check=False)
    assert result.returncode != 0 and 'no Hugging Face token' in result.stderr
    assert not (fake_hub.root / REPO).exists()
