"""FakeHub answers the real huggingface_hub client (and timm) like the Hub: download, cache, errors, publish;
and scripts/push.py, run against it, publishes a Hub folder's allow-listed files and nothing else."""
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from conftest import load_script
from fake_hub import git_blob_sha1  # the fake_hub fixtures come from conftest.py

TOKEN = "hf_fake_token_123"
ROOT = Path(__file__).resolve().parents[1]


def _make_repo(root, repo_id, files):
    for name, data in files.items():
        path = root / repo_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _head(url, headers=None):
    req = urllib.request.Request(url, method="HEAD", headers=headers or {})
    with urllib.request.urlopen(req) as r:
        return r.status, dict(r.headers)


def test_download_goes_through_head_and_get_then_the_cache(fake_hub):
    data = json.dumps({"architecture": "resnet10t"}).encode()
    _make_repo(fake_hub.root, "org/tiny", {"config.json": data, "sub/notes.txt": b"hello"})
    sha = fake_hub.commit_sha("org/tiny")

    path = hf_hub_download("org/tiny", "config.json")
    assert open(path, "rb").read() == data
    assert f"snapshots/{sha}/config.json" in path.replace(os.sep, "/")  # the empty temp cache, keyed by X-Repo-Commit
    assert fake_hub.log() == [
        "HEAD /org/tiny/resolve/main/config.json 200", "GET /org/tiny/resolve/main/config.json 200"]

    assert hf_hub_download("org/tiny", "config.json") == path
    assert fake_hub.log()[2:] == ["HEAD /org/tiny/resolve/main/config.json 200"]  # cache hit: metadata only
    assert open(hf_hub_download("org/tiny", "sub/notes.txt"), "rb").read() == b"hello"
    assert all(r.auth is None for r in fake_hub.requests)  # no token anywhere in this test

    meta = get_hf_file_metadata(hf_hub_url("org/tiny", "config.json"))
    assert (meta.commit_hash, meta.etag, meta.size, meta.xet_file_data) == (sha, git_blob_sha1(data), len(data), None)
    status, headers = _head(hf_hub_url("org/tiny", "config.json"))
    assert status == 200 and not [h for h in headers if h.lower().startswith("x-xet")]


def test_commit_sha_is_stable_and_follows_content(fake_hub):
    _make_repo(fake_hub.root, "org/a", {"f": b"1"})
    sha = fake_hub.commit_sha("org/a")
    assert len(sha) == 40 and sha == fake_hub.commit_sha("org/a")
    _make_repo(fake_hub.root, "org/a", {"f": b"2"})
    assert fake_hub.commit_sha("org/a") != sha


def test_missing_file_repo_and_revision_raise_the_hub_errors(fake_hub):
    _make_repo(fake_hub.root, "org/tiny", {"config.json": b"{}"})
    with pytest.raises(RemoteEntryNotFoundError) as err:  # from the server's 404, not a local cache miss
        hf_hub_download("org/tiny", "model.safetensors")
    assert isinstance(err.value, EntryNotFoundError)
    assert err.value.response.headers["X-Repo-Commit"] == fake_hub.commit_sha("org/tiny")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/tiny", "config.json", revision="v2")
    assert [r.status for r in fake_hub.requests] == [404, 404, 404]


def test_range_request_returns_partial_content(fake_hub):
    _make_repo(fake_hub.root, "org/tiny", {"w.bin": bytes(range(100))})
    url = hf_hub_url("org/tiny", "w.bin")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=90-"})) as r:
        assert (r.status, r.headers["Content-Range"], r.read()) == (206, "bytes 90-99/100", bytes(range(90, 100)))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=100-"}))
    assert err.value.code == 416


def test_timm_hf_hub_model_loads_the_weights_served(fake_hub):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("resnet10t", num_classes=10)
    # Values no fresh initialisation would produce, so equality proves they came from the served file.
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    repo = fake_hub.root / "xsep-test" / "resnet10t-tiny"
    repo.mkdir(parents=True)
    save_file(weights, str(repo / "model.safetensors"))
    config = {
        "architecture": "resnet10t",
        "num_classes": 10,
        "num_features": source.num_features,
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                           "crop_pct": 1.0, "interpolation": "bilinear", "num_classes": 10,
                           "classifier": "fc", "license": "apache-2.0"},
    }
    (repo / "config.json").write_text(json.dumps(config))

    model = timm.create_model("hf-hub:xsep-test/resnet10t-tiny", pretrained=True)
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert [r.path for r in fake_hub.requests if r.method == "GET"] == [
        "/xsep-test/resnet10t-tiny/resolve/main/config.json",
        "/xsep-test/resnet10t-tiny/resolve/main/model.safetensors",
    ]


@pytest.mark.parametrize("xet_installed_path", [False, True], ids=["plain-commit", "xet-pipeline"])
def test_create_repo_and_upload_folder_publish_byte_identical_files(fake_hub, tmp_path, monkeypatch,
                                                                     xet_installed_path):
    # hf_xet is installed: unless HF_HUB_DISABLE_XET is set, upload_folder takes its Xet pipeline, which
    # still asks preupload first and so commits "regular" files without any Xet traffic.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet_installed_path)
    folder = tmp_path / "export"
    folder.mkdir()
    files = {
        "README.md": b"---\nlibrary_name: timm\nlicense: apache-2.0\ntags:\n- image-classification\n---\n# Tiny\n",
        "config.json": json.dumps({"architecture": "resnet10t", "num_classes": 10}).encode(),
        "model.safetensors": os.urandom(2048),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    api = HfApi(endpoint=fake_hub.endpoint, token=TOKEN)
    url = api.create_repo("xsep-test/published", exist_ok=True)
    assert url.repo_id == "xsep-test/published" and url.endpoint == fake_hub.endpoint
    info = api.upload_folder(repo_id="xsep-test/published", folder_path=folder, commit_message="Add model")
    assert api.create_repo("xsep-test/published", exist_ok=True).repo_id == "xsep-test/published"

    published = fake_hub.root / "xsep-test" / "published"
    assert {p.name: p.read_bytes() for p in published.iterdir()} == files
    assert info.oid == fake_hub.commit_sha("xsep-test/published")
    assert api.repo_exists("xsep-test/published") and not api.repo_exists("xsep-test/absent")
    card = api.model_info("xsep-test/published").card_data
    assert (card.library_name, card.license, card.tags) == ("timm", "apache-2.0", ["image-classification"])

    yaml_checks = ["POST /api/validate-yaml 200"] * (1 if xet_installed_path else 2)
    assert fake_hub.log() == [
        "POST /api/repos/create 200",
        *yaml_checks,
        "POST /api/models/xsep-test/published/preupload/main 200",
        "POST /api/models/xsep-test/published/commit/main 200",
        "POST /api/repos/create 409",  # exist_ok=True tolerates the Hub's 409
        "GET /api/models/xsep-test/published 200",
        "GET /api/models/xsep-test/absent 404",
        "GET /api/models/xsep-test/published 200",
    ]
    commit = fake_hub.requests[len(yaml_checks) + 2]
    assert commit.body == {"summary": "Add model", "files": sorted(files), "deleted": []}
    assert commit.headers["content-type"] == "application/x-ndjson"
    assert {r.auth for r in fake_hub.requests} == {"Bearer"}
    assert TOKEN not in repr(fake_hub.requests)  # the transcript keeps the scheme, never the token


def test_unchanged_upload_makes_no_commit_and_delete_file_commits(fake_hub, tmp_path):
    _make_repo(fake_hub.root, "org/m", {"a.txt": b"a", "b.txt": b"b"})
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "a.txt").write_bytes(b"a")
    api = HfApi(token=TOKEN)  # endpoint from the patched constants
    sha = fake_hub.commit_sha("org/m")
    assert api.upload_folder(repo_id="org/m", folder_path=tmp_path / "same").oid == sha
    assert not [r for r in fake_hub.requests if r.path.endswith("/commit/main")]  # preupload's oid matched

    api.delete_file("b.txt", repo_id="org/m")
    assert fake_hub.requests[-1].body["deleted"] == ["b.txt"]
    assert sorted(p.name for p in (fake_hub.root / "org" / "m").iterdir()) == ["a.txt"]
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("b.txt", repo_id="org/m")


def test_write_endpoints_need_a_token(fake_hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).create_repo("org/new")
    assert err.value.response.status_code == 401
    assert not (fake_hub.root / "org" / "new").exists()


def test_subprocess_client_uses_the_env_vars(fake_hub, tmp_path):
    # The fixture exports the same variables; pass them explicitly to show what a script needs.
    _make_repo(fake_hub.root, "org/tiny", {"config.json": b'{"x": 1}'})
    env = {**os.environ, **fake_hub.client_env(tmp_path / "sub_home", token=TOKEN)}
    code = "from huggingface_hub import hf_hub_download as d; print(open(d('org/tiny', 'config.json')).read())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '{"x": 1}'
    assert (tmp_path / "sub_home" / "hub" / "models--org--tiny").is_dir()
    assert [(r.method, r.auth) for r in fake_hub.requests] == [("HEAD", "Bearer"), ("GET", "Bearer")]



# ----------------------------------------------------------------------- scripts/push.py against the fake Hub
HUB_CARD = "mobilenetv3_small_xsep_050.cifar10"  # a real Hub folder of the zoo (its checks must pass), copied
PUSH_REPO = f"xsep-test/{HUB_CARD}"
# Beside the folder's own files: a token, a stray checkpoint, a training folder, a hidden cache, and a file
# named like the weights inside a subfolder. None of it may reach the Hub.
STRAYS = {
    ".env": b"HF_TOKEN=hf_planted_secret_0123456789\n",
    "pytorch_model.bin": b"\x80\x02stray pickle",
    "checkpoints/epoch-0001/optimizer.bin": b"optimizer state",
    "checkpoints/epoch-0001/model.safetensors": b"weights of epoch 1",
    ".cache/x": b"x",
}
LEFT_OUT = f"leaving out of {PUSH_REPO}: .cache/, .env, checkpoints/, pytorch_model.bin (not part of a Hub model repo)"


def _push_script():
    return load_script("push")


def _planted_folder(tmp_path):
    """A copy of a Hub folder plus a per-epoch log (all pushed) and the STRAYS (left out).

    Returns the folder and the files that belong on the Hub, name -> bytes."""
    root = tmp_path / "hub_root"
    folder = shutil.copytree(ROOT / "hub_cards" / HUB_CARD, root / HUB_CARD)
    _make_repo(root, HUB_CARD, {"log.jsonl": b'{"epoch": 1, "top1": 10.0}\n', **STRAYS})
    hub_files = {name: (folder / name).read_bytes() for name in ("README.md", "config.json", "log.jsonl",
                                                                 "model.safetensors", "xsep_zoo.json")}
    return folder, hub_files


@pytest.mark.parametrize("xet_installed_path", [False, True], ids=["plain-commit", "xet-pipeline"])
def test_push_script_uploads_only_the_allow_listed_files(fake_hub, tmp_path, monkeypatch, capsys,
                                                         xet_installed_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet_installed_path)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder, hub_files = _planted_folder(tmp_path)

    urls = _push_script().main([str(folder), "--org", "xsep-test"])

    assert HfApi().list_repo_files(PUSH_REPO) == sorted(hub_files)  # what the Hub lists, through its API
    assert fake_hub.files(PUSH_REPO) == hub_files  # and what it stores, byte for byte
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(PUSH_REPO, ".env")
    preupload, commit = [r for r in fake_hub.requests if r.path.rsplit("/", 2)[-2] in ("preupload", "commit")]
    assert sorted(name for name, _ in preupload.body["files"]) == sorted(hub_files)  # not even asked about others
    assert sorted(commit.body["files"]) == sorted(hub_files) and commit.body["deleted"] == []
    assert urls == [f"{fake_hub.endpoint}/{PUSH_REPO}/commit/{fake_hub.commit_sha(PUSH_REPO)}"]
    out = capsys.readouterr()
    assert out.out.splitlines() == [LEFT_OUT, f"pushed {folder} -> {urls[0]}"]
    assert TOKEN not in out.out + out.err and "hf_planted_secret" not in out.out + out.err


def test_push_script_dry_run_lists_what_goes_and_what_stays(fake_hub, tmp_path, capsys):
    folder, hub_files = _planted_folder(tmp_path)
    root = folder.parent
    training = root / "notes"  # not a Hub folder
    _make_repo(root, training.name, {"todo.txt": b"publish the e400 runs"})
    push = _push_script()

    push.main([str(folder), "--org", "xsep-test", "--dry-run"])
    would_push = f"would push {folder} -> {PUSH_REPO}: {', '.join(sorted(hub_files))}"
    assert capsys.readouterr().out.splitlines() == [LEFT_OUT, would_push]

    push.main(["--all", "--hub-root", str(root), "--org", "xsep-test", "--dry-run"])
    assert capsys.readouterr().out.splitlines() == [
        f"skipping {training}: not a Hub folder (holds none of model.safetensors, config.json, README.md)",
        LEFT_OUT,
        would_push,
    ]
    with pytest.raises(SystemExit) as refused:  # named explicitly, a folder that is not a Hub folder is refused
        push.main([str(training), "--dry-run"])
    assert str(refused.value.code) == f"{training}: not a Hub folder, missing model.safetensors, config.json, README.md"
    assert fake_hub.requests == []  # a dry run touches nothing
