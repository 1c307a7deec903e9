"""Webdataset shards on any fsspec filesystem (``s3://``, ``gs://``, ``https://``, ``memory://``, ``file://``).

* :func:`expand_url_shards` turns ``s3://bucket/shards-{000000..000099}.tar`` (brace range),
  ``s3://bucket/shards-*.tar`` (glob) or ``s3://bucket/dir`` (every ``*.tar`` below) into URLs;
* :func:`open_url` opens one for :mod:`tarfile` (the reader indexes members without extracting);
* :func:`read_tar_member` reads ``tar://URL::MEMBER`` sources with a ranged read at the member's
  offset (the member index is built once per process per shard).

Local paths never come here: :func:`is_url` is false for them and the local code paths stay as is.
Credentials are fsspec's business (environment, ``~/.aws``, ...); ``s3://`` needs ``s3fs``.
"""

from __future__ import annotations

import os
import re
import tarfile
import threading
from typing import IO

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_lock = threading.Lock()
_index: dict = {"pid": None, "shards": {}}


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL with a scheme (``s3://…``, ``memory://…``), not a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def _fs(url: str):
    import fsspec  # fsspec: optional, only for URLs

    fs, _, _ = fsspec.get_fs_token_paths(url)
    return fs


def _with_protocol(fs, path: str, like: str) -> str:
    proto = like.split("://", 1)[0]
    return path if is_url(path) else f"{proto}://{path.lstrip('/') if proto != 'file' else path}"


def expand_url_shards(spec: str, split: str | None = None) -> list[str]:
    """The shard URLs named by ``spec`` (``{a..b}`` range, glob, a ``.tar`` URL or a directory), sorted.

    Brace-range names that do not exist are dropped, like the local reader does.
    """
    fs = _fs(spec)
    m = _BRACE.search(spec)
    if m:
        a, b = m.group(1), m.group(2)
        names = [spec[: m.start()] + str(i).zfill(len(a)) + spec[m.end() :] for i in range(int(a), int(b) + 1)]
        return [n for n in names if fs.exists(n)]
    if any(ch in spec for ch in "*?["):
        return sorted(_with_protocol(fs, p, spec) for p in fs.glob(spec))
    if fs.isdir(spec):
        root = spec.rstrip("/") + (f"/{split}" if split and fs.isdir(spec.rstrip("/") + f"/{split}") else "")
        found = sorted(_with_protocol(fs, p, spec) for p in fs.find(root) if p.endswith(".tar"))
        if split and not root.endswith(f"/{split}"):
            found = [u for u in found if split in u.rsplit("/", 1)[-1]]
        return found
    return [spec] if fs.exists(spec) else []


def open_url(url: str) -> IO[bytes]:
    """A seekable binary file object for ``url`` (close it when done)."""
    return _fs(url).open(url, "rb")


def _member_index(url: str) -> dict[str, tuple[int, int]]:
    with _lock:
        if _index["pid"] != os.getpid():  # forked worker: rebuild rather than share
            _index.update(pid=os.getpid(), shards={})
        idx = _index["shards"].get(url)
    if idx is None:
        with open_url(url) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            idx = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
        with _lock:
            _index["shards"][url] = idx
    return idx


def read_tar_member(url: str, member: str) -> bytes:
    """The bytes of ``member`` inside the uncompressed tar at ``url`` (one ranged read).

    Raises:
        KeyError: no such member; OSError: the shard cannot be read or is truncated.
    """
    offset, size = _member_index(url)[member]
    data = _fs(url).cat_file(url, start=offset, end=offset + size)
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes (truncated tar?)")
    return data
