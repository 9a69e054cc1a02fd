"""FakeHub: a small, honest stand-in for the Hugging Face Hub, served on 127.0.0.1 for tests.

Why: the project downloads models (``timm.create_model('hf-hub:...')``, ``hf_hub_download``) and
publishes them (``HfApi.create_repo`` + ``upload_folder``). Mocking those functions would test
nothing, and the real Hub is unreachable here. So this module speaks the Hub's HTTP protocol from a
thread in the test process and the REAL huggingface_hub client runs end to end against it. Model
repos are plain folders ``root/<org>/<name>/`` holding the files of their ``main`` revision.

What huggingface_hub 2.4.0 needs back (read from its source; the endpoints are in ``_ROUTES``):
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` must carry ``X-Repo-Commit`` (40 hex), ``ETag``
  and ``Content-Length``; a 404 must carry ``X-Error-Code: RepoNotFound`` / ``EntryNotFound`` /
  ``RevisionNotFound`` (``utils/_http.py:hf_raise_for_status`` maps only that header to the typed
  errors). No ``X-Xet-*`` header is ever sent, so downloads take the plain-HTTP path.
- Every file is a regular git blob: ETag and tree ``oid`` are its git blob sha1, and preupload
  answers ``uploadMode: "regular"`` for every file, so uploads travel base64 inside the commit's
  NDJSON body and neither LFS nor Xet storage is involved (the server picks the mode; the
  client never insists on LFS). The real Hub would pick LFS/Xet for ``*.safetensors``: that
  transfer path is NOT exercised by this fake.
- The commit sha is a sha1 over the repo id and its (path, blob sha1) list: stable for the same
  content, new after every change. Only ``main`` exists as a branch; shas seen earlier stay valid.
- Not implemented (answered 501 or 400, never faked): dataset/space repos, pull requests, LFS/Xet
  transfers, redirects to a CDN, pagination, gated/private repos, YAML validation of model cards.

Use it in-process through the ``fake_hub`` fixture (huggingface_hub is imported before any test
runs and reads ``HF_ENDPOINT`` at import, so the fixture patches its module constants), or from a
subprocess with the environment from ``FakeHub.client_env``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [  # (method, pattern, handler name); first match wins
    ("GET", re.compile(r"/api/agent-harnesses"), "_agent_harnesses"),
    ("GET", re.compile(r"/api/whoami-v2"), "_whoami"),
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "_model_info"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "_tree"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "_preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "_commit"),
    ("HEAD", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
    ("GET", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RECORDED_HEADERS = ("user-agent", "range", "content-type", "accept-encoding", "x-hf-download-counter")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file: what the Hub sends as ETag / oid for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubRequest:
    """One request as the server saw it. ``auth`` is only the scheme ("Bearer") or None: never the token."""

    method: str
    path: str
    query: dict
    status: int = 0
    auth: str | None = None
    headers: dict = field(default_factory=dict)
    body: dict | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status}"


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubHTTPServer(ThreadingHTTPServer):
    """Threading server that also remembers its open connections, so ``stop()`` can cut keep-alives."""

    daemon_threads = True

    def __init__(self, hub: "FakeHub"):
        self.hub = hub
        self.open_sockets: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)


class FakeHub:
    """Serves the model repos under ``root`` (``root/<org>/<name>/...``) like the Hub does.

    ``with FakeHub(root) as hub:`` starts it; ``hub.endpoint`` is ``http://127.0.0.1:<port>``;
    ``hub.requests`` lists every request seen (``HubRequest``); ``hub.log()`` gives them as
    ``"METHOD /path status"`` strings. ``user`` is the namespace of repos created without an org.
    Write endpoints (create, preupload, commit) answer 401 without an Authorization header, like the Hub.
    """

    def __init__(self, root: str | Path, user: str = "fake-user"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = user
        self.requests: list[HubRequest] = []
        self.lock = threading.RLock()  # one commit or one read of a repo's state at a time
        self._history: dict[tuple[str, str], dict[str, bytes]] = {}  # (repo, sha) -> files
        self._server: HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FakeHub":
        self._server = HubHTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        for sock in list(self._server.open_sockets):  # idle keep-alive connections of the client
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> list[str]:
        return [str(r) for r in self.requests]

    def client_env(self, hf_home: str | Path, token: str | None = None) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub should use this hub and an empty cache.

        ``HF_HUB_DISABLE_XET=1`` makes ``upload_folder`` take the plain create_commit path (with hf_xet
        installed it would use the Xet upload pipeline); ``HF_HUB_DISABLE_TELEMETRY=1`` stops the
        one-off ``GET /api/agent-harnesses`` made while building the user agent.
        """
        hf_home = Path(hf_home)
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # ----------------------------------------------------------------- repo state
    def repo_dir(self, repo_id: str) -> Path:
        return self.root.joinpath(*repo_id.split("/"))

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Path in repo -> content, for the repo's main revision."""
        base = self.repo_dir(repo_id)
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def commit_sha(self, repo_id: str, files: dict[str, bytes] | None = None) -> str:
        files = self.files(repo_id) if files is None else files
        listing = "".join(f"{path}\0{git_blob_sha1(data)}\n" for path, data in sorted(files.items()))
        return hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    def _existing_repo(self, repo_id: str) -> Path:
        org, name = repo_id.split("/")
        base = self.repo_dir(repo_id)
        if not (_NAME.fullmatch(org) and _NAME.fullmatch(name) and base.is_dir()):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return base

    def _snapshot(self, repo_id: str, rev: str) -> tuple[dict[str, bytes], str]:
        """Files and commit sha of ``rev``: ``main`` is the folder now; a sha seen earlier by this
        server is served from memory (so a client pinned to an older commit still resolves it)."""
        self._existing_repo(repo_id)
        files = self.files(repo_id)
        sha = self.commit_sha(repo_id, files)
        self._history[repo_id, sha] = files
        rev = unquote(rev)
        if rev in ("main", sha):
            return files, sha
        if (repo_id, rev) in self._history:
            return self._history[repo_id, rev], rev
        raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"

    # ----------------------------------------------------------------- endpoints
    # Each returns (status, headers, body bytes or JSON-able); `req` is the _Handler.

    def _resolve(self, req, repo, rev, path):
        """HEAD/GET of a file. HEAD gives the metadata hf_hub_download checks, GET the bytes (Range ok)."""
        with self.lock:
            files, sha = self._snapshot(repo, rev)
        path = unquote(path)
        if path not in files:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = files[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha1(data)}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
        }
        if req.headers.get("Range"):  # the client sends a Range only to resume a broken download
            start, end = _byte_range(req.headers["Range"], len(data))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start : end + 1]
        return 200, headers, data

    def _model_info(self, req, repo, rev=None):
        """GET /api/models/{repo}[/revision/{rev}]: used by model_info, repo_exists, snapshot_download."""
        with self.lock:
            files, sha = self._snapshot(repo, rev or "main")
            mtimes = [p.stat().st_mtime for p in self.repo_dir(repo).rglob("*")] or [0.0]
        card = _card_data(files.get("README.md", b"").decode("utf-8", "replace"))
        with_blobs = req.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_sha1(d)} if with_blobs else {})}
            for p, d in files.items()
        ]
        stamp = datetime.fromtimestamp(max(mtimes), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        info = {
            "_id": sha[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": sha,
            "lastModified": stamp, "createdAt": stamp, "private": False, "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": card.get("tags", []) if isinstance(card.get("tags"), list) else [],
            "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
            "cardData": card or None, "siblings": siblings, "usedStorage": sum(map(len, files.values())),
        }
        return 200, {}, info

    def _tree(self, req, repo, rev, path=None):
        """GET /api/models/{repo}/tree/{rev}[/{path}]: list_repo_files, snapshot_download, delete_patterns."""
        with self.lock:
            files, _ = self._snapshot(repo, rev)
        prefix = unquote(path).strip("/") + "/" if path else ""
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        entries: dict[str, dict] = {}
        for p, data in files.items():
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            if recursive or len(rest) == 1:
                entries[p] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
            for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
                d = prefix + "/".join(rest[:depth])
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                       "size": 0, "path": d})
        if prefix and not entries:
            raise _HubError(404, "Entry not found", "EntryNotFound")
        return 200, {}, sorted(entries.values(), key=lambda e: (e["type"] != "directory", e["path"]))

    def _create_repo(self, req):
        """POST /api/repos/create: 200 {"url"} when created, 409 when it exists (exist_ok tolerates 409)."""
        self._require_auth(req)
        body = req.json_body()
        org, name = body.get("organization") or self.user, body.get("name", "")
        req.record.body = {k: body.get(k) for k in ("organization", "name", "type", "visibility") if k in body}
        if body.get("type") not in (None, "model"):
            raise _HubError(400, "FakeHub serves model repos only")
        if not (_NAME.fullmatch(org) and _NAME.fullmatch(name)) or "--" in name or ".." in name:
            raise _HubError(400, f"Invalid repo name: {org}/{name}")
        repo_id = f"{org}/{name}"
        with self.lock:
            if self.repo_dir(repo_id).is_dir():
                return 409, {}, {"error": "You already created this model repo", "url": self._repo_url(repo_id)}
            self.repo_dir(repo_id).mkdir(parents=True)
        return 200, {}, {"url": self._repo_url(repo_id), "name": repo_id}

    def _preupload(self, req, repo, rev):
        """POST .../preupload/{rev}: every file is "regular" (no LFS, no Xet).

        ``oid`` lets the client skip unchanged files.
        """
        self._require_auth(req)
        self._require_main(req, rev)
        body = req.json_body()
        req.record.body = {"files": [(f.get("path"), f.get("size")) for f in body.get("files", [])]}
        with self.lock:
            files, sha = self._snapshot(repo, rev)
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
            for f in body.get("files", [])
        ]
        return 200, {}, {"files": answer, "commitOid": sha}

    def _commit(self, req, repo, rev):
        """POST .../commit/{rev}: NDJSON (header, file base64, deletedFile, deletedFolder), applied all or nothing."""
        self._require_auth(req)
        self._require_main(req, rev)
        try:
            lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except ValueError:
            raise _HubError(400, "Body is not NDJSON")
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "First NDJSON line must be the commit header")
        header = lines[0]["value"]
        summary = {"summary": header.get("summary"), "files": [], "deleted": []}
        req.record.body = summary
        with self.lock:
            base = self._existing_repo(repo)
            files = self.files(repo)
            parent = header.get("parentCommit")
            if parent and parent != self.commit_sha(repo, files):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            for item in lines[1:]:
                key, value = item.get("key"), item.get("value", {})
                path = _safe_path(value.get("path", ""))
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, f"Unsupported encoding for {path}")
                    try:
                        files[path] = base64.b64decode(value.get("content", ""), validate=True)
                    except ValueError:
                        raise _HubError(400, f"Invalid base64 content for {path}")
                    summary["files"].append(path)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    summary["deleted"].append(path)
                elif key == "deletedFolder":
                    gone = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                    if not gone:
                        raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del files[p]
                    summary["deleted"].append(path)
                else:  # lfsFile cannot happen: preupload never answers "lfs"
                    raise _HubError(400, f"FakeHub does not support commit operation {key!r}")
            shutil.rmtree(base)  # write the new tree in one go
            for p, data in files.items():
                (base / p).parent.mkdir(parents=True, exist_ok=True)
                (base / p).write_bytes(data)
            base.mkdir(parents=True, exist_ok=True)
            sha = self.commit_sha(repo, files)
            self._history[repo, sha] = files
        return 200, {}, {"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url(repo)}/commit/{sha}",
                         "pullRequestUrl": None}

    def _validate_yaml(self, req):
        """POST /api/validate-yaml: sent before uploading a README.md; accepted without checks (no YAML in stdlib)."""
        body = req.json_body()
        req.record.body = {"repoType": body.get("repoType"), "chars": len(body.get("content", ""))}
        return 200, {}, {"errors": [], "warnings": []}

    def _whoami(self, req):
        self._require_auth(req)
        return 200, {}, {"type": "user", "name": self.user, "orgs": [], "auth": {"type": "access_token",
                                                                              "accessToken": {"role": "write"}}}

    def _agent_harnesses(self, req):
        """GET /api/agent-harnesses: fetched once per HF_HOME when telemetry is on; an empty registry."""
        return 200, {}, {"standardEnvVars": [], "harnesses": {}}

    @staticmethod
    def _require_auth(req) -> None:
        if req.record.auth is None:
            raise _HubError(401, "Invalid credentials in Authorization header")

    @staticmethod
    def _require_main(req, rev: str) -> None:
        if req.query.get("create_pr"):
            raise _HubError(400, "FakeHub does not support pull requests")
        if unquote(rev) != "main":
            raise _HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")


def _safe_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) byte of a single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range, or 416."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m and m[1]:
        start, end = int(m[1]), min(int(m[2]), size - 1) if m[2] else size - 1
    elif m and m[2]:
        start, end = max(size - int(m[2]), 0), size - 1
    else:
        start, end = 0, -1
    if start > end:
        raise _HubError(416, "Range not satisfiable", None, {"Content-Range": f"bytes */{size}"})
    return start, end


def _card_data(readme: str) -> dict:
    """Top-level scalars and scalar lists of a README's YAML front matter (the stdlib has no YAML
    parser); keys holding nested structures (e.g. ``model-index``) are left out rather than guessed."""
    m = re.match(r"---\r?\n(.*?)\r?\n---", readme, re.S)
    card: dict = {}
    key = None
    for line in m[1].splitlines() if m else []:
        if kv := re.fullmatch(r"([A-Za-z_][\w-]*):(?:\s+(.*?))?\s*", line):
            key, value = kv[1], (kv[2] or "").strip()
            if value.startswith("[") and value.endswith("]"):
                card[key] = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
            else:
                card[key] = value.strip("'\"") if value else []
        elif key in card and isinstance(card[key], list) and (item := re.fullmatch(r"\s*- ([^:]+?)\s*", line)):
            card[key].append(item[1].strip("'\""))
        elif key is not None and line.strip():
            card.pop(key, None)
            key = None
    return card


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries Content-Length

    def setup(self):
        super().setup()
        self.server.open_sockets.add(self.connection)

    def finish(self):
        self.server.open_sockets.discard(self.connection)
        super().finish()

    def log_message(self, *args):  # keep pytest output clean; the transcript is in hub.requests
        pass

    def do_HEAD(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise _HubError(400, "Body is not JSON")

    def _dispatch(self):
        hub: FakeHub = self.server.hub
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        self.record = HubRequest(
            method=self.command, path=url.path, query=self.query,
            auth=auth.split(" ", 1)[0] if auth else None,
            headers={h: self.headers[h] for h in _RECORDED_HEADERS if h in self.headers},
        )
        hub.requests.append(self.record)
        try:
            for method, pattern, name in _ROUTES:
                if method == self.command and (m := pattern.fullmatch(url.path)):
                    status, headers, payload = getattr(hub, name)(self, **m.groupdict())
                    break
            else:
                raise _HubError(501, f"FakeHub does not implement {self.command} {url.path}")
        except _HubError as e:
            headers = {**e.headers, "X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
            status, payload = e.status, {"error": e.message}
        except Exception as e:  # a bug in the fake: say so instead of hanging the client
            status, headers, payload = 500, {"X-Error-Message": f"FakeHub error: {e!r}"}, {"error": repr(e)}
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


# --------------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # the server itself needs only the standard library
    pytest = None

if pytest is not None:

    def point_huggingface_hub_at(hub: FakeHub, hf_home: Path, monkeypatch) -> None:
        """Point the already-imported huggingface_hub at ``hub`` with an empty cache under ``hf_home``.

        huggingface_hub reads HF_ENDPOINT, HF_HOME & co. into ``constants`` at import, builds the
        resolve-URL template from the endpoint and binds the module-level ``HfApi()`` (behind
        ``huggingface_hub.model_info`` etc., used by timm) to it, so setting the environment now is
        not enough: patch those. The environment is set too, for subprocesses started by the test.
        """
        from huggingface_hub import constants, hf_api

        hf_home = Path(hf_home)
        env = hub.client_env(hf_home)
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        patches = {
            "ENDPOINT": hub.endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": env["HF_HUB_CACHE"],
            "HF_TOKEN_PATH": str(hf_home / "token"),  # never pick up the developer's own token
            "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
        }
        for name, value in patches.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)

    @pytest.fixture
    def fake_hub_root(tmp_path) -> Path:
        """Folder the hub serves: put model repos at ``<root>/<org>/<name>/`` before downloading."""
        root = tmp_path / "fake_hub"
        root.mkdir()
        return root

    @pytest.fixture
    def fake_hub(fake_hub_root, tmp_path, monkeypatch):
        """A running FakeHub, with huggingface_hub (in this process and in subprocesses started
        from the test, via the environment) pointed at it and an empty cache under ``tmp_path/hf_home``."""
        from huggingface_hub import close_session

        with FakeHub(fake_hub_root) as hub:
            point_huggingface_hub_at(hub, tmp_path / "hf_home", monkeypatch)
            yield hub
            close_session()  # drop pooled keep-alive connections to this server
