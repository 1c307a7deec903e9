"""A local stand-in for the Hugging Face hub, for offline tests through the real ``huggingface_hub`` client.

A threaded HTTP server on ``127.0.0.1`` (a free port) implementing just the part of the hub's HTTP API
that ``huggingface_hub`` 2.4's download functions use (read from ``hf_api.py``, ``file_download.py``,
``_snapshot_download.py`` of the installed client)::

    GET  /api/{models|datasets}/{org}/{name}[/revision/{rev}]     repo info: id, sha, siblings
    GET  /api/{models|datasets}/{org}/{name}/tree/{rev}[/{path}]  tree listing (?recursive=true)
    HEAD /{org}/{name}/resolve/{rev}/{path}                        file metadata (model repos)
    GET  /{org}/{name}/resolve/{rev}/{path}                        file bytes, honours Range: bytes=N-
    HEAD|GET /datasets/{org}/{name}/resolve/{rev}/{path}           the same for dataset repos

HEAD/GET answers carry ``ETag`` and ``X-Linked-Etag`` (the file's sha256, like an LFS file), ``X-Repo-Commit`` (the repo's
40-hex commit), ``Content-Length`` and ``Accept-Ranges: bytes``; a Range request gets ``206`` with
``Content-Range``. Unknown repos answer 404 ``X-Error-Code: RepoNotFound``, unknown files 404
``EntryNotFound``, unknown revisions 404 ``RevisionNotFound`` — the codes the client maps to its errors.

Fault injection (for resume tests): :attr:`HubStub.drop_once` — paths whose next full GET sends the
headers and half the bytes, then closes the connection; :attr:`HubStub.trickle` — path → bytes/s
served slowly (so a client process can be killed mid-file); :attr:`HubStub.hostile` — URL path prefix →
a hostile answer (:data:`HOSTILE_ANSWERS`: an HTML page, JSON of the wrong shape, an endless body), with
:attr:`HubStub.sent` counting the bytes of each endless body sent before the client hung up.
:attr:`HubStub.requests` logs ``(method, url_path, range_header)`` of every request.

Content: :func:`osv5m_repo` builds a miniature ``osv5m/osv5m`` dataset repo in the published layout
(``test.csv``, ``train.csv`` with the real header, ``images/<split>/00.zip`` ``01.zip`` of generated
JPEGs, ``README.md``); :func:`clip_repo` a tiny random CLIP in ``save_pretrained`` layout.
:func:`start_default_hub` serves both, the CLIP under ``geolocal/StreetCLIP`` and
``openai/clip-vit-large-patch14-336`` (the ``streetclip`` and ``clip-vit-l-14-336`` aliases).

    with start_default_hub(tmp) as hub:           # hub.endpoint = "http://127.0.0.1:PORT"
        hub.point_client(monkeypatch)              # patch huggingface_hub + env for this process
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

STREETCLIP_ID = "geolocal/StreetCLIP"
BASELINE_ID = "openai/clip-vit-large-patch14-336"
OSV5M_ID = "osv5m/osv5m"


@dataclass
class Repo:
    """One repository: ``files`` path → bytes at one commit ``sha``."""

    files: dict[str, bytes]
    sha: str = ""

    def __post_init__(self):
        if not self.sha:
            h = hashlib.sha1()
            for p in sorted(self.files):
                h.update(p.encode() + b"\0" + hashlib.sha256(self.files[p]).digest())
            self.sha = h.hexdigest()
        self.etags = {p: hashlib.sha256(b).hexdigest() for p, b in self.files.items()}


@dataclass
class HubStub:
    """The server. ``repos``: ``(repo_type, repo_id)`` → :class:`Repo` (repo_type ``model``/``dataset``)."""

    repos: dict[tuple[str, str], Repo]
    drop_once: set[str] = field(default_factory=set)
    trickle: dict[str, float] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    hostile: dict[str, str] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    #: where an endless body stops anyway (so a client without a bound still ends)
    endless_limit: int = 256 * 2**20
    #: a Range answer starts this many bytes before the asked start (as block-aligned caches may)
    range_slack: int = 0
    #: advertise every file as Xet-backed, as the real hub does (``xetHash`` in the file list, ``X-Xet-Hash``
    #: and ``X-Xet-Refresh-Route`` on ``resolve``) — there is no Xet server behind it: a client that takes
    #: the Xet path fails, one that reads ``resolve`` over HTTP gets the bytes
    xet: bool = False

    def __post_init__(self):
        self._lock = threading.Lock()
        stub = self

        class Handler(_Handler):
            hub = stub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # ---- bookkeeping
    def log(self, method: str, path: str, rng: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, rng))

    def file_gets(self) -> list[tuple[str, str, str | None]]:
        """The GET requests of file bytes (``/resolve/``) so far."""
        with self._lock:
            return [r for r in self.requests if r[0] == "GET" and "/resolve/" in r[1]]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "HubStub":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, hf_home: str | Path) -> dict[str, str]:
        """Environment variables pointing a ``huggingface_hub`` client (a subprocess) at this stub."""
        hf_home = Path(hf_home)
        return {
            "HF_ENDPOINT": self.endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }

    def point_client(self, monkeypatch, hf_home: str | Path) -> None:
        """Point this process's ``huggingface_hub`` at the stub (constants are read at import time,
        so the module attributes are patched as well as the environment)."""
        point_client_at(monkeypatch, self.endpoint, hf_home)


def point_client_at(monkeypatch, endpoint: str, hf_home: str | Path) -> None:
    """Patch ``huggingface_hub.constants`` (ENDPOINT, URL template, offline flag, cache dirs) and the
    environment so this process's client talks to ``endpoint`` with a cache under ``hf_home``."""
    from huggingface_hub import constants

    hf_home = Path(hf_home)
    env = {
        "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(hf_home / "hub"), raising=False)
    try:  # transformers copies the cache dir and the offline flag at import
        import transformers.utils.hub as thub

        for name, value in (("HF_HUB_CACHE", str(hf_home / "hub")), ("TRANSFORMERS_CACHE", str(hf_home / "hub")),
                            ("HUGGINGFACE_HUB_CACHE", str(hf_home / "hub")), ("_is_offline_mode", False)):
            if hasattr(thub, name):
                monkeypatch.setattr(thub, name, value)
    except ImportError:
        pass


class _Handler(BaseHTTPRequestHandler):
    hub: HubStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head=head)

    def _error(self, status: int, code: str, msg: str, head: bool = False) -> None:
        self._send(status, json.dumps({"error": msg}).encode(),
                   {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": msg}, head=head)

    def _repo(self, rtype: str, repo_id: str, rev: str | None, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get((rtype, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
            return None
        if rev is not None and rev not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
            return None
        return repo

    # ---- verbs
    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.hub.log(method, path, self.headers.get("Range"))
        parts = [p for p in path.split("/") if p]
        head = method == "HEAD"
        mode = next((m for prefix, m in self.hub.hostile.items() if path.startswith(prefix)), None)
        try:
            if mode is not None:
                return self._hostile(mode, path)
            if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                return self._api(parts, parse_qs(url.query), head)
            rtype = "model"
            if parts[:1] == ["datasets"]:
                rtype, parts = "dataset", parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(rtype, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
            self._error(404, "EntryNotFound", f"no route for {path}", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _hostile(self, mode: str, path: str) -> None:
        if mode == "html":
            return self._send(200, b"<!DOCTYPE html><html><body>Please sign in to the proxy</body></html>",
                              {"Content-Type": "text/html"})
        if mode in HOSTILE_JSON:
            return self._json(HOSTILE_JSON[mode])
        if mode not in ("endless-json", "endless-body"):
            raise ValueError(f"unknown hostile mode {mode!r}")
        # chunked, never ending (up to hub.endless_limit): a broken proxy or a hostile hub
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if mode == "endless-json" else "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = (b'[' + b'{"type": "file", "path": "x", "size": 1},' * 1600) if mode == "endless-json" else b"\0" * 65536
        sent = 0
        try:
            while sent < self.hub.endless_limit:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                with self.hub._lock:
                    self.hub.sent[path] = sent
                if mode == "endless-json":
                    piece = piece[1:] if piece.startswith(b"[") else piece
            self.wfile.write(b"0\r\n\r\n")
        finally:
            self.close_connection = True

    def _api(self, parts: list[str], query: dict, head: bool) -> None:
        rtype = parts[1][:-1]
        repo_id = f"{parts[2]}/{parts[3]}"
        rest = parts[4:]
        if not rest or rest[0] == "revision":
            repo = self._repo(rtype, repo_id, rest[1] if len(rest) > 1 else None, head)
            if repo is None:
                return
            siblings = [{"rfilename": p, "size": len(b), "blobId": repo.etags[p][:40]} for p, b in sorted(repo.files.items())]
            return self._json({"id": repo_id, "_id": repo_id, "sha": repo.sha, "private": False, "disabled": False,
                               "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                               "lastModified": "2026-01-01T00:00:00.000Z"}, head=head)
        if rest[0] == "tree" and len(rest) >= 2:
            repo = self._repo(rtype, repo_id, rest[1], head)
            if repo is None:
                return
            prefix = "/".join(rest[2:]).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            base = prefix + "/" if prefix else ""
            files = [p for p in sorted(repo.files) if p.startswith(base)]
            if prefix and not files:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist", head=head)
            entries, dirs = [], set()
            for p in files:
                rel = p[len(base):].split("/")
                for k in range(1, len(rel)):  # the folders on the way
                    d = base + "/".join(rel[:k])
                    if d not in dirs and (recursive or k == 1):
                        dirs.add(d)
                        entries.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
                if recursive or len(rel) == 1:
                    b = repo.files[p]
                    entries.append({"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest(),
                                    "lfs": {"oid": repo.etags[p], "size": len(b), "pointerSize": 134}})
                    if self.hub.xet:
                        entries[-1]["xetHash"] = hashlib.sha256(b"xet" + b).hexdigest()
            return self._json(entries, head=head)
        self._error(404, "EntryNotFound", f"no api route {'/'.join(parts)}", head=head)

    def _resolve(self, rtype: str, repo_id: str, rev: str, fpath: str, head: bool) -> None:
        repo = self._repo(rtype, repo_id, rev, head)
        if repo is None:
            return
        if fpath not in repo.files:
            return self._error(404, "EntryNotFound", f"{fpath} not found in {repo_id}", head=head)
        data = repo.files[fpath]
        headers = {"ETag": f'"{repo.etags[fpath]}"', "X-Linked-Etag": f'"{repo.etags[fpath]}"', "X-Repo-Commit": repo.sha,
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self.hub.xet:
            headers["X-Xet-Hash"] = hashlib.sha256(b"xet" + data).hexdigest()
            headers["X-Xet-Refresh-Route"] = f"{self.hub.endpoint}/api/{rtype}s/{repo_id}/xet-read-token/{repo.sha}"
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[6:].split(",")[0].partition("-")
            start = int(first or 0)
            end = int(last) + 1 if last else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = max(0, start - self.hub.range_slack)
            data, status = data[start:end], 206
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{len(repo.files[fpath])}"
        if head:
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(repo.files[fpath])))
            self.end_headers()
            return
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        key = f"{'datasets/' if rtype == 'dataset' else ''}{repo_id}/{fpath}"
        drop = False
        with self.hub._lock:
            if start == 0 and (fpath in self.hub.drop_once or key in self.hub.drop_once):
                self.hub.drop_once.discard(fpath)
                self.hub.drop_once.discard(key)
                drop = True
        if drop:  # half the bytes, then hang up: the client sees a short body
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        rate = self.hub.trickle.get(fpath) or self.hub.trickle.get(key)
        if rate:
            step = max(1, int(rate / 20))
            for i in range(0, len(data), step):
                self.wfile.write(data[i : i + step])
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.wfile.write(data)


#: JSON answers of the wrong shape, by :attr:`HubStub.hostile` mode.
HOSTILE_JSON = {
    "json-list": [1, 2, 3],  # repo info that is not an object
    "json-no-sha": {"id": "x", "siblings": []},  # repo info without a commit
    "json-object": {"files": []},  # a file list that is not a list
    "json-no-size": [{"type": "file", "path": "test.csv"}],
    "json-escape": [{"type": "file", "path": "../../outside.txt", "size": 3}],
}


# ----------------------------------------------------------------------------------------------
# repository content
# ----------------------------------------------------------------------------------------------
def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)  # fixed dates: stable bytes
    return buf.getvalue()


def osv5m_repo(n_test: int = 24, n_train: int = 48, n_zips: int = 2, size=(64, 48), pad_bytes: int = 0) -> Repo:
    """A miniature ``osv5m/osv5m`` in the published layout: ``{split}.csv`` with the real header and
    ``images/{split}/00.zip`` … (members ``<id>.jpg`` in ``00.zip``, ``<NN>/<id>.jpg`` in the others,
    both of which the reader handles). Images: solid colours + noise keyed to the location.

    ``pad_bytes``: a stored member of that many random bytes in each zip (makes zips big enough to
    interrupt a download mid-way).
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    from helpers_data import OSV5M_COLUMNS, _osv5m_row

    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {"README.md": b"# OSV-5M (miniature, for tests)\n",
                               ".gitattributes": b"*.zip filter=lfs diff=lfs merge=lfs -text\n"}
    offset = {"test": 0, "train": 500}  # other places for the training rows than for the test rows
    for split, n in (("test", n_test), ("train", n_train)):
        rows = [_osv5m_row(i + offset[split], 5_000_000_000 + 7919 * (i + offset[split])) for i in range(n)]
        members: list[dict[str, bytes]] = [{} for _ in range(n_zips)]
        for i, r in enumerate(rows):
            lat, lon = float(r["latitude"]), float(r["longitude"])
            colour = np.array([(lat + 90) / 180, (lon + 180) / 360, (i % 5) / 5]) * 255
            arr = np.clip(colour + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=85)
            z = i % n_zips
            name = f"{r['id']}.jpg" if z == 0 else f"{z:02d}/{r['id']}.jpg"
            members[z][name] = buf.getvalue()
        for z in range(n_zips):
            if pad_bytes:
                members[z]["padding.bin"] = rng.bytes(pad_bytes)
            files[f"images/{split}/{z:02d}.zip"] = _zip_bytes(members[z])
        files[f"{split}.csv"] = pd.DataFrame(rows, columns=OSV5M_COLUMNS).to_csv(index=False).encode()
    return Repo(files)


def clip_repo(workdir: str | Path) -> Repo:
    """The tests' tiny random CLIP (``conftest.build_tiny_clip``) as a model repo."""
    from conftest import build_tiny_clip

    d = Path(workdir) / "tiny_clip_repo"
    if not (d / "config.json").exists():
        build_tiny_clip(d)
    files = {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
    files["README.md"] = b"# tiny random CLIP (tests)\n"
    return Repo(files)


def start_default_hub(workdir: str | Path, **osv5m_kw) -> HubStub:
    """A stub serving the miniature OSV5M and the tiny CLIP under both default encoder ids."""
    clip = clip_repo(workdir)
    return HubStub({
        ("dataset", OSV5M_ID): osv5m_repo(**osv5m_kw),
        ("model", STREETCLIP_ID): clip,
        ("model", BASELINE_ID): Repo(dict(clip.files)),
    })


def free_closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for the offline test)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
