"""Chunk-addressed stores: many writers commit chunks in any order, one merge writes the manifest.

The local engine (:func:`geosolver.embed.embed_table`) splits a dataset table into fixed input
chunks — chunk ``c`` is rows ``[c·S, (c+1)·S)`` — and appends chunk ``c`` as shard ``shard-{c:05d}``.
Distributed engines (Ray actors, torchrun ranks) finish chunks out of order, on different
processes, so they cannot append to one manifest. Instead each chunk is committed on its own:

* ``shard-{c:05d}.npy`` and ``shard-{c:05d}.parquet`` are written under temporary names and
  renamed (the same atomic helpers :class:`~geosolver.store.StoreWriter` uses);
* then ``_chunks/chunk-{c:05d}.json`` (rows, inputs, sha256, failure records) is written
  atomically — **that record is the chunk's commit point**. A retried task rewrites the same
  three names, so nothing is ever duplicated.

:func:`merge_chunks` runs once every chunk is committed: it lists the shards in chunk order in
``manifest.json`` and writes ``failures.parquet`` exactly as the local engine would, so the
finished store has the same shards, rows, order and failure records as a single-process run.
Chunks already listed in the manifest (a store the local engine started) count as committed.

Never open a store that has pending chunk records with ``StoreWriter`` before merging: its
resume clean-up removes shard files the manifest does not list yet.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from geosolver.embed import DEFAULT_SHARD_SIZE, EmbedError, check_same_job, table_fingerprint
from geosolver.store import (
    FAILURES,
    MANIFEST,
    EmbeddingStore,
    StoreWriter,
    atomic_write_json,
    atomic_write_parquet,
    check_shard,
    encoder_compatible,
    write_shard_files,
)

CHUNK_DIR = "_chunks"


def shard_name(chunk: int) -> str:
    """The shard stem of chunk ``chunk``: ``shard-00042`` (what the local engine names it)."""
    return f"shard-{int(chunk):05d}"


@dataclass(frozen=True)
class ChunkPlan:
    """How a table of ``n_inputs`` rows splits into chunks of ``shard_size`` input rows."""

    n_inputs: int
    shard_size: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_inputs // self.shard_size) if self.n_inputs else 0

    def bounds(self, chunk: int) -> tuple[int, int]:
        """``(lo, hi)``: the input rows ``[lo, hi)`` of ``chunk``."""
        lo = int(chunk) * self.shard_size
        return lo, min(self.n_inputs, lo + self.shard_size)


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    for col in ("id", "source", "lat", "lon"):
        if col not in table.columns:
            raise EmbedError(f"dataset table lacks column {col!r} (has {list(table.columns)})")
    return table.reset_index(drop=True)


def prepare_store(
    out: str | os.PathLike,
    identity: dict,
    table: pd.DataFrame,
    shard_size: int | None = None,
    tta: str | None = None,
    config: dict | None = None,
    skipped: pd.DataFrame | None = None,
    create: bool = True,
    wait_s: float = 0.0,
) -> ChunkPlan:
    """Create the store's manifest (if absent) or check an existing one fits ``table``.

    The manifest config holds the same keys the local engine writes (``n_inputs``,
    ``ids_sha256``, ``tta``, ``shard_size``), so either engine can resume the other's store.

    Args:
        out: store directory.
        identity: ``encoder.identity()``.
        table: the reader table (``id, source, lat, lon, ...``) in its fixed order.
        shard_size: input rows per chunk for a new store (an existing store keeps its own).
        tta: test-time augmentation mode (must match an existing store).
        config: command/configuration recorded in a new manifest.
        skipped: reader-skipped rows (``id, reason``), kept as ``skipped.parquet``.
        create: create a missing manifest; ``False`` (ranks > 0) waits up to ``wait_s`` seconds
            for another process to create it.
        wait_s: see ``create``.

    Returns:
        The :class:`ChunkPlan` of the store.

    Raises:
        EmbedError: the store was started from another dataset, TTA or encoder, or never appeared.
    """
    out = Path(out)
    fingerprint = table_fingerprint(table)
    mpath = out / MANIFEST
    if not mpath.exists():
        if create:
            cfg = dict(config or {})
            cfg.update({"n_inputs": int(len(table)), "ids_sha256": fingerprint, "tta": tta})
            cfg["shard_size"] = int(shard_size or DEFAULT_SHARD_SIZE)
            w = StoreWriter(out, identity, config=cfg, resume=False)  # fresh directory: no clean-up runs
            if skipped is not None and len(skipped):
                w.record_skipped(skipped)
        else:
            deadline = time.monotonic() + wait_s
            while not mpath.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not mpath.exists():
                raise EmbedError(f"{out}: no manifest after {wait_s:.0f}s; rank 0 creates it — is rank 0 running?")
    manifest = json.loads(mpath.read_text())
    first = manifest.get("config", {})
    check_same_job(first, out, len(table), fingerprint, tta)
    ok, why = encoder_compatible(manifest["encoder"], identity)
    if not ok:
        raise EmbedError(f"cannot resume {out}: {why}")
    return ChunkPlan(int(first["n_inputs"]), int(first["shard_size"]))


def _record_path(out: Path, chunk: int) -> Path:
    return out / CHUNK_DIR / f"chunk-{int(chunk):05d}.json"


def committed_chunks(out: str | os.PathLike) -> set[int]:
    """Chunks whose shard is committed: listed in the manifest or holding a chunk record."""
    out = Path(out)
    done: set[int] = set()
    mpath = out / MANIFEST
    if mpath.exists():
        for s in json.loads(mpath.read_text())["shards"]:
            if s["name"].startswith("shard-") and s["name"][6:].isdigit():
                done.add(int(s["name"][6:]))
    cdir = out / CHUNK_DIR
    if cdir.is_dir():
        for p in cdir.glob("chunk-*.json"):
            stem = p.stem[len("chunk-") :]
            if stem.isdigit() and (out / f"{shard_name(int(stem))}.npy").exists():
                done.add(int(stem))
    return done


def write_chunk(
    out: str | os.PathLike,
    chunk: int,
    embeddings: np.ndarray,
    meta: pd.DataFrame,
    failures: Sequence[dict],
    n_inputs: int,
) -> dict:
    """Commit one chunk: shard files first (temp + rename), then the chunk record.

    Args:
        out: store directory (its manifest must exist).
        chunk: chunk index; the shard is named :func:`shard_name` ``(chunk)``.
        embeddings: ``(rows, dim)`` float; L2-normalised and stored as float16 like StoreWriter.
        meta: one row per embedding (``id``, ``lat``, ``lon`` degrees, metadata), input order.
        failures: ``{"id", "reason"}`` per failed input of the chunk, in input order.
        n_inputs: input rows the chunk covers (successes + failures).

    Returns:
        The chunk record (``name``, ``rows``, ``n_inputs``, ``sha256``, ``failures``).
    """
    out = Path(out)
    dim = int(json.loads((out / MANIFEST).read_text())["dim"])
    emb = check_shard(embeddings, meta, dim, where=f"chunk {chunk}")
    name = shard_name(chunk)
    digest = write_shard_files(out, name, emb, meta)
    rec = {
        "name": name,
        "rows": int(emb.shape[0]),
        "n_inputs": int(n_inputs),
        "sha256": digest,
        "failures": [{"id": str(f["id"]), "reason": str(f["reason"])} for f in failures],
    }
    (out / CHUNK_DIR).mkdir(exist_ok=True)
    atomic_write_json(_record_path(out, chunk), rec)
    return rec


def chunk_meta(table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The metadata a shard keeps for input ``rows``: every table column (as the local engine)."""
    return table.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)


def merge_chunks(out: str | os.PathLike, extra: dict[str, Any] | None = None) -> EmbeddingStore:
    """Write the final manifest and ``failures.parquet`` from every chunk, in chunk order.

    Args:
        out: store directory whose chunks are all committed.
        extra: fields added to the manifest (e.g. ``last_run``).

    Returns:
        The finished (``complete``) store.

    Raises:
        EmbedError: some chunks are not committed yet (names the first few).
    """
    out = Path(out)
    manifest = json.loads((out / MANIFEST).read_text())
    plan = ChunkPlan(int(manifest["config"]["n_inputs"]), int(manifest["config"]["shard_size"]))
    listed = {s["name"]: s for s in manifest["shards"]}
    missing = [c for c in range(plan.n_chunks) if c not in committed_chunks(out)]
    if missing:
        raise EmbedError(
            f"{out}: {len(missing)} of {plan.n_chunks} chunk(s) not committed yet (first: {missing[:5]}); "
            "finish or re-run the embedding, then merge"
        )
    old_fail = pd.read_parquet(out / FAILURES) if (out / FAILURES).exists() else None
    shards, fails = [], []
    for c in range(plan.n_chunks):
        name = shard_name(c)
        rp = _record_path(out, c)
        if rp.exists():  # a distributed writer's record wins over an older listing
            rec = json.loads(rp.read_text())
            f = pd.DataFrame(rec["failures"], columns=["id", "reason"]).astype(str)
        else:  # committed by the local engine: keep its entry and failure rows
            rec = listed[name]
            f = old_fail[old_fail["shard"] == name][["id", "reason"]] if old_fail is not None else pd.DataFrame(columns=["id", "reason"])
        shards.append({k: rec[k] for k in ("name", "rows", "n_inputs", "sha256")})
        fails.append(f.assign(shard=name))
    failures = pd.concat(fails, ignore_index=True) if fails else pd.DataFrame(columns=["id", "reason", "shard"])
    failures = failures.astype(str) if len(failures) else pd.DataFrame({c: pd.Series(dtype=str) for c in ("id", "reason", "shard")})
    atomic_write_parquet(out / FAILURES, failures)
    manifest["shards"] = shards
    manifest["rows"] = int(sum(s["rows"] for s in shards))
    manifest["n_inputs"] = int(sum(s["n_inputs"] for s in shards))
    manifest["n_failures"] = int(len(failures))
    manifest["complete"] = True
    manifest.update(extra or {})
    atomic_write_json(out / MANIFEST, manifest)
    shutil.rmtree(out / CHUNK_DIR, ignore_errors=True)
    for p in out.iterdir():  # temp files of killed writers
        if ".tmp" in p.name and p.is_file():
            p.unlink(missing_ok=True)
    return EmbeddingStore(out)


def embed_rows(
    table: pd.DataFrame,
    lo: int,
    hi: int,
    encoder,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Embed input rows ``[lo, hi)`` in this process (DataLoader workers decode + preprocess).

    Returns:
        ``(ok_rows, embeddings, failures)``: int64 row numbers that embedded, float32
        ``(len(ok_rows), dim)``, and ``(row, reason)`` for the rest — all in row order.
    """
    from torch.utils.data import DataLoader

    from geosolver.embed import _collate, _ImageDataset, _worker_init

    ds = _ImageDataset(table["source"].to_numpy(dtype=object)[lo:hi], encoder.preprocessor, encoder.min_side, offset=lo)
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate,
        worker_init_fn=_worker_init if num_workers else None,
    )
    ok_rows, embs, fails = [], [], []
    for _idx, ok_idx, pixels, errors in loader:
        if pixels is not None:
            embs.append(encoder.embed_pixels(pixels, tta=tta))
            ok_rows.append(ok_idx)
        fails.extend(errors)
    rows = np.concatenate(ok_rows) if ok_rows else np.zeros(0, np.int64)
    emb = np.concatenate(embs) if embs else np.zeros((0, encoder.dim), np.float32)
    return rows, emb, sorted(fails)
