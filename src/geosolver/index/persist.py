"""A saved index on disk: ``STORE/index-<kind>.faiss`` + ``STORE/index-<kind>.json`` (settings,
faiss version, and the store's shard checksums), and the staleness check that refuses an index
whose store has changed since it was built."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from geosolver.errors import IndexBuildError, StaleIndexError
from geosolver.files import atomic_write_json, sha256_file
from geosolver.store import EmbeddingStore

from .backend import faiss_error, faiss_module

INDEX_FORMAT_VERSION = 1


def store_fingerprint(store: EmbeddingStore) -> dict:
    """What identifies a store's content: rows, dim, encoder identity and each shard's sha256."""
    return {
        "rows": len(store),
        "dim": store.dim,
        "encoder": store.encoder,
        "shards": [[s.name, s.rows, s.sha256] for s in store.shards],
    }


def index_paths(store_path: str | os.PathLike, kind: str) -> tuple[Path, Path]:
    """``(STORE/index-<kind>.faiss, STORE/index-<kind>.json)``."""
    p = Path(store_path)
    return p / f"index-{kind}.faiss", p / f"index-{kind}.json"


def write_index_files(cpu_index: Any, fpath: Path, jpath: Path, kind: str, settings: dict, fingerprint: dict, store: EmbeddingStore | None) -> None:
    """Write the faiss index (atomically, through a temporary name) and its description."""
    f = faiss_module()
    tmp = fpath.with_name(fpath.name + f".tmp{os.getpid()}")
    f.write_index(cpu_index, str(tmp))
    os.replace(tmp, fpath)
    atomic_write_json(
        jpath,
        {
            "format_version": INDEX_FORMAT_VERSION,
            "kind": kind,
            "settings": settings,
            "rows": int(cpu_index.ntotal),
            "dim": int(cpu_index.d),
            "sha256": sha256_file(fpath),  # `geosolver info --verify` checks the .faiss file against it
            "faiss_version": getattr(f, "__version__", "?"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "store": str(store.path) if store is not None else None,
            "store_fingerprint": fingerprint,
        },
    )


def read_index_files(path: str | os.PathLike, store: EmbeddingStore | str | os.PathLike | None = None, check: bool = True) -> tuple[Any, dict, EmbeddingStore]:
    """Read a saved index (``.faiss`` path, or a store directory with a single saved index).

    Returns:
        ``(faiss_index, description, store)``.

    Raises:
        IndexBuildError: no such index / unreadable settings / damaged file.
        StaleIndexError: ``check`` and the store changed since the index was built.
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("index-*.faiss"))
        if len(found) != 1:
            raise IndexBuildError(f"{p}: expected one saved index-<kind>.faiss, found {[x.name for x in found]}")
        p = found[0]
    jpath = p.with_suffix(".json")
    if not p.exists() or not jpath.exists():
        raise IndexBuildError(f"no saved index at {p} (needs {p.name} and {jpath.name}); build one with `geosolver index build`")
    kind_of_file = p.stem.removeprefix("index-") or "flat"

    def rebuild_hint(st: Any) -> str:
        where = st.path if isinstance(st, EmbeddingStore) else p.parent
        return f"build it again with `geosolver index build {where} --kind {kind_of_file}`"

    try:
        meta = json.loads(jpath.read_text())
        if not isinstance(meta, dict) or "kind" not in meta or "store_fingerprint" not in meta:
            raise ValueError("kind or store_fingerprint missing")
    except (ValueError, OSError) as e:
        raise IndexBuildError(f"{jpath} is not a readable index description ({type(e).__name__}: {e}); {rebuild_hint(None)}") from None
    if store is None:  # the store it sits in (survives moving the directory), else the one recorded
        store = EmbeddingStore(p.parent if (p.parent / "manifest.json").exists() else meta.get("store") or p.parent)
    elif not isinstance(store, EmbeddingStore):
        store = EmbeddingStore(store)
    if check and meta.get("store_fingerprint") != store_fingerprint(store):
        raise StaleIndexError(f"saved index {p} is stale: store {store.path} changed since it was built")
    try:
        index = faiss_module().read_index(str(p))
    except RuntimeError as e:  # truncated, garbage, another faiss' format: faiss says so in C++ terms
        raise IndexBuildError(f"saved index {p} is damaged and cannot be read ({faiss_error(e)}); {rebuild_hint(store)}") from None
    rows = meta.get("rows", store_fingerprint(store)["rows"] if check else None)
    if int(index.d) != store.dim or (rows is not None and int(index.ntotal) != int(rows)):
        raise IndexBuildError(
            f"saved index {p} holds {int(index.ntotal):,} vectors of dim {int(index.d)}, but its description says "
            f"{rows} rows of dim {store.dim}: the file was replaced or damaged; {rebuild_hint(store)}"
        )
    return index, meta, store
