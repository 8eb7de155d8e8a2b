"""Loopback servers for tests: a small Hugging Face Hub and a plain file server, on 127.0.0.1 only.

    from tests.loopback import serve_hub, serve_files, hub_environment

    with serve_hub(root, gated={"org/private"}) as endpoint:      # "http://127.0.0.1:PORT"
        with hub_environment(endpoint):                          # HF_ENDPOINT for this process too
            hf_hub_download("org/model", "unet/config.json", endpoint=endpoint)

    with serve_files(root, drop_after=1000) as base_url:         # "http://127.0.0.1:PORT"
        requests.get(f"{base_url}/example.org/x.txt")            # serves root/example.org/x.txt
        base_url.log                                             # [(method, path, Range header or None)]

``serve_hub(root)`` serves model repositories from ``root/<org>/<name>/...`` and dataset repositories from
``root/datasets/<org>/<name>/...`` with the part of the Hub protocol that huggingface_hub's
``hf_hub_download`` / ``snapshot_download`` (and so transformers' and diffusers' ``from_pretrained``) use:

* ``HEAD|GET /[datasets/]{repo}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (the sha256 of a
  large/binary file, stored as LFS on the real hub, with ``X-Linked-Etag`` / ``X-Linked-Size``; the git
  blob sha1 of a small text file), ``Content-Length``; GET honours ``Range``;
* ``GET /api/{models|datasets}/{repo}[/revision/{revision}]``: ``{"id", "sha", "siblings": [{"rfilename"}]}``;
* ``GET /api/{models|datasets}/{repo}/tree/{revision}[/{path}]?recursive=...``: the file listing with
  ``oid``, ``size`` and ``lfs: {oid, size, pointerSize}``;
* errors as the hub sends them (``X-Error-Code``: RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
  A repository in ``gated`` (or holding a file ``.gated``) answers 401 without a token and 403 with a token
  not in ``tokens``.

The revision is ``main`` or the repository's commit id, a sha1 of its file list and contents (so it changes
when the files do).  ``serve_files(root, drop_after=N, drops=1)`` serves ``root/<path>`` with ``Range``
support; with ``drop_after`` its first ``drops`` responses close the connection after N body bytes
(a dropped download).  Both run in daemon threads, stop when the ``with`` block ends and in any case after
``timeout`` seconds.

As pytest fixtures (``from tests.loopback import loopback_hub, loopback_files`` in a test module or
conftest): each yields ``SimpleNamespace(root, url)``, an empty folder under ``tmp_path`` served live
(files written after the start are served too).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["serve_hub", "serve_files", "hub_environment", "ServerURL", "repo_commit", "loopback_hub",
           "loopback_files"]

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".msgpack", ".h5", ".zip", ".tar",
                ".gz", ".npz", ".npy", ".png", ".jpg", ".jpeg", ".parquet")
LFS_MIN_SIZE = 10 * 1024


class ServerURL(str):
    """The server's base URL; ``.log`` lists the requests seen as ``(method, path, Range header)``."""

    log: list
    server: ThreadingHTTPServer


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: Path, size: int) -> bool:
    return path.suffix.lower() in LFS_SUFFIXES or size >= LFS_MIN_SIZE


def _repo_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def repo_commit(folder: str | os.PathLike) -> str:
    """The 40-hex commit id the loopback hub reports for the repository folder ``folder``."""
    folder = Path(folder)
    h = hashlib.sha1()
    for rel in _repo_files(folder):
        h.update(rel.encode() + b"\0" + hashlib.sha256((folder / rel).read_bytes()).digest())
    return h.hexdigest()


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` of a ``bytes=a-b`` header, ``None`` without one; ValueError when unsatisfiable."""
    if not header:
        return None
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":  # suffix range
        n = int(m.group(2))
        return max(0, size - n), size
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size:
        raise ValueError("unsatisfiable")
    return start, min(end, size)


class _Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pcpo-loopback/1"

    def log_message(self, *args):  # quiet
        pass

    def _record(self):
        self.server.log.append((self.command, urlsplit(self.path).path, self.headers.get("Range")))

    def _plain(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="text/plain"):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None):
        self._plain(status, json.dumps(obj).encode(), headers, "application/json")

    def _error(self, status: int, code: str, message: str):
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    def _send_file(self, path: Path, headers: dict, drop_after: int | None = None):
        data = path.read_bytes()
        size = len(data)
        try:
            rng = _byte_range(self.headers.get("Range"), size) if self.command == "GET" else None
        except ValueError:
            self._plain(416, b"", {"Content-Range": f"bytes */{size}"})
            return
        start, end = rng if rng else (0, size)
        self.send_response(206 if rng else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:end]
        if drop_after is not None and drop_after < len(body):
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        self.wfile.write(body)


class _HubHandler(_Base):
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    # -- helpers -------------------------------------------------------------------------------------
    def _repo_folder(self, repo_type: str, repo: str) -> Path | None:
        base = Path(self.server.root) / ("datasets" if repo_type == "dataset" else "")
        folder = base / repo
        if ".." in repo.split("/") or not folder.is_dir():
            return None
        return folder

    def _access(self, folder: Path, repo: str) -> bool:
        gated = repo in self.server.gated or (folder / ".gated").exists()
        if not gated:
            return True
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is not None and token in self.server.tokens:
            return True
        msg = f"Access to model {repo} is restricted. You must have access to it and be authenticated."
        self._error(403 if token else 401, "GatedRepo", msg)
        return False

    def _resolve(self, folder: Path, revision: str) -> str | None:
        commit = repo_commit(folder)
        return commit if revision in ("main", commit) else None

    def _route(self):
        self._record()
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?", path)
        if m:
            return self._api("dataset" if m.group(1) == "datasets" else "model", m.group(2), m.group(3),
                             m.group(4) or "main", m.group(5) or "", parse_qs(parts.query))
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve_file("dataset" if m.group(1) else "model", m.group(2), m.group(3), m.group(4))
        self._error(404, "RepoNotFound", f"no route for {path}")

    def _api(self, repo_type, repo, what, revision, sub, query):
        folder = self._repo_folder(repo_type, repo)
        if folder is None:
            return self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        if not self._access(folder, repo):
            return
        commit = self._resolve(folder, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = _repo_files(folder)
        if what == "tree":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            prefix = sub.strip("/")
            out, dirs = [], set()
            for rel in files:
                if prefix and not rel.startswith(prefix + "/"):
                    continue
                tail = rel[len(prefix) + 1:] if prefix else rel
                if not recursive and "/" in tail:
                    d = (prefix + "/" if prefix else "") + tail.split("/")[0]
                    dirs.add(d)
                    continue
                if recursive:
                    segs = rel.split("/")[:-1]
                    for i in range(1, len(segs) + 1):
                        d = "/".join(segs[:i])
                        if not prefix or d.startswith(prefix + "/"):
                            dirs.add(d)
                data = (folder / rel).read_bytes()
                entry = {"type": "file", "path": rel, "size": len(data), "oid": _git_blob_sha1(data)}
                if _is_lfs(folder / rel, len(data)):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                out.append(entry)
            out += [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
                    for d in sorted(dirs)]
            return self._json(out)
        gated = repo in self.server.gated or (folder / ".gated").exists()
        return self._json({"id": repo, "sha": commit, "private": False, "gated": "manual" if gated else False,
                           "disabled": False, "siblings": [{"rfilename": f} for f in files]})

    def _resolve_file(self, repo_type, repo, revision, rel):
        folder = self._repo_folder(repo_type, repo)
        if folder is None:
            return self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
        if not self._access(folder, repo):
            return
        commit = self._resolve(folder, revision)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        path = folder / rel
        if ".." in rel.split("/") or not path.is_file() or rel.split("/")[-1].startswith("."):
            return self._error(404, "EntryNotFound", f"{rel} does not exist on {revision}")
        data = path.read_bytes()
        headers = {"X-Repo-Commit": commit}
        if _is_lfs(path, len(data)):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{_git_blob_sha1(data)}"'
        self._send_file(path, headers)


class _FileHandler(_Base):
    def do_HEAD(self):
        self._serve()

    def do_GET(self):
        self._serve()

    def _serve(self):
        self._record()
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        path = Path(self.server.root) / rel
        if ".." in rel.split("/") or not path.is_file():
            return self._plain(404, b"not found")
        drop = None
        with self.server.lock:
            if self.command == "GET" and self.server.drop_after is not None and self.server.drops_left > 0:
                self.server.drops_left -= 1
                drop = self.server.drop_after
        self._send_file(path, {"ETag": f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'}, drop_after=drop)


@contextlib.contextmanager
def _serve(handler, timeout: float, **attrs):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.log = []
    server.lock = threading.Lock()
    for k, v in attrs.items():
        setattr(server, k, v)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(timeout, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    url = ServerURL(f"http://127.0.0.1:{server.server_address[1]}")
    url.log, url.server = server.log, server
    try:
        yield url
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def serve_hub(root: str | os.PathLike, *, gated=(), tokens=(), timeout: float = 600):
    """A loopback Hugging Face Hub serving the repositories under ``root``; yields its endpoint URL."""
    with _serve(_HubHandler, timeout, root=str(root), gated=set(gated), tokens=set(tokens)) as url:
        yield url


@contextlib.contextmanager
def serve_files(root: str | os.PathLike, drop_after: int | None = None, *, drops: int = 1, timeout: float = 600):
    """A loopback HTTP file server for ``root`` (Range supported); yields its base URL."""
    with _serve(_FileHandler, timeout, root=str(root), drop_after=drop_after, drops_left=int(drops)) as url:
        yield url


@contextlib.contextmanager
def hub_environment(endpoint: str):
    """Point huggingface_hub at ``endpoint`` in this process and its children (``HF_ENDPOINT`` plus the
    module constants huggingface_hub read at import), and restore everything afterwards."""
    from huggingface_hub import constants

    saved_env = os.environ.get("HF_ENDPOINT")
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    os.environ["HF_ENDPOINT"] = endpoint
    constants.ENDPOINT = endpoint.rstrip("/")
    constants.HUGGINGFACE_CO_URL_TEMPLATE = constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        yield endpoint
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = saved
        if saved_env is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = saved_env


try:
    import pytest
except ImportError:  # pragma: no cover - the servers work without pytest
    pytest = None

if pytest is not None:
    from types import SimpleNamespace

    @pytest.fixture
    def loopback_hub(tmp_path):
        root = tmp_path / "loopback-hub"
        root.mkdir()
        with serve_hub(root) as url:
            yield SimpleNamespace(root=root, url=url)

    @pytest.fixture
    def loopback_files(tmp_path):
        root = tmp_path / "loopback-files"
        root.mkdir()
        with serve_files(root) as url:
            yield SimpleNamespace(root=root, url=url)
