"""An embedding job: which table, which store, which chunks.

Chunk ``c`` of a job is always the input rows ``[c·S, (c+1)·S)`` of the dataset table (``S`` =
``shard_size``, fixed when the store is created) and becomes shard ``shard-{c:05d}``. The store's
manifest records the job's fingerprint (``n_inputs``, ``ids_sha256`` of the ordered ids, ``tta``,
``shard_size``) so any engine can resume any other engine's store, and a different dataset or TTA
is refused instead of mixed in.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from geosolver.errors import EmbedError
from geosolver.store import MANIFEST, StoreWriter, encoder_compatible, read_manifest

DEFAULT_SHARD_SIZE = 10_000
#: columns a dataset table must have (from :func:`geosolver.data.read_dataset`).
TABLE_COLUMNS = ("id", "source", "lat", "lon")


def check_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table with a fresh 0..n-1 index, or :class:`EmbedError` if it lacks a needed column."""
    for col in TABLE_COLUMNS:
        if col not in table.columns:
            raise EmbedError(f"dataset table lacks column {col!r} (has {list(table.columns)})")
    return table.reset_index(drop=True)


def table_fingerprint(table: pd.DataFrame) -> str:
    """sha256 over the ordered ids of a dataset table: identifies what a store was built from."""
    h = hashlib.sha256()
    ids = table["id"].astype(str).to_numpy()
    for s in range(0, len(ids), 100_000):
        h.update("\n".join(ids[s : s + 100_000]).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_same_job(first_config: dict, out, n_rows: int, fingerprint: str, tta: str | None) -> None:
    """Refuse to continue a store that was started from another dataset or with another ``tta``.

    Args:
        first_config: the ``config`` of the store's manifest (as written when it was created).
        out: the store path (for the message).
        n_rows, fingerprint: the current dataset table's length and :func:`table_fingerprint`.
        tta: the current test-time augmentation setting.
    """
    if first_config.get("ids_sha256") != fingerprint:
        raise EmbedError(
            f"{out} was started from another dataset ({first_config.get('n_inputs')} rows, ids sha256 "
            f"{str(first_config.get('ids_sha256'))[:12]}…) than this one ({n_rows} rows, {fingerprint[:12]}…); "
            "use a new --out or the same dataset and --limit"
        )
    if first_config.get("tta") != tta:
        raise EmbedError(f"{out} was started with tta={first_config.get('tta')!r}, not {tta!r}; use a new --out for another --tta")


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

    def inputs(self, chunks) -> int:
        """Input rows covered by ``chunks``."""
        return sum(self.bounds(c)[1] - self.bounds(c)[0] for c in chunks)


def open_store(
    out: str | os.PathLike,
    identity: dict,
    table: pd.DataFrame,
    shard_size: int | None = None,
    tta: str | None = None,
    config: dict | None = None,
    skipped: pd.DataFrame | None = None,
    create: bool = True,
    exclusive: bool = True,
    wait_s: float = 0.0,
) -> tuple[StoreWriter, ChunkPlan]:
    """Create the job's store (if absent) or check that an existing one is this job's.

    Args:
        out: store directory.
        identity: ``encoder.identity()``.
        table: the reader table (``id, source, lat, lon, ...``) in its fixed order.
        shard_size: input rows per chunk for a new store (an existing store keeps its own).
        tta: test-time augmentation mode (must match an existing store).
        config: command/configuration recorded in a new manifest.
        skipped: reader-skipped rows (``id, reason``), kept as ``skipped.parquet``.
        create: create a missing store; ``False`` (ranks > 0) waits up to ``wait_s`` seconds for
            another process to create it.
        exclusive: this process is the store's only writer (see :class:`StoreWriter`).
        wait_s: see ``create``.

    Returns:
        ``(writer, plan)``.

    Raises:
        EmbedError: the store was started from another dataset, TTA or encoder, or never appeared.
    """
    out = Path(out)
    fingerprint = table_fingerprint(table)
    if shard_size is not None and int(shard_size) < 1:
        raise EmbedError(f"shard size must be >= 1, got {shard_size}")
    if not create:
        deadline = time.monotonic() + wait_s
        while not (out / MANIFEST).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not (out / MANIFEST).exists():
            raise EmbedError(f"{out}: no manifest after {wait_s:.0f}s; rank 0 creates it — is rank 0 running?")
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        check_same_job(manifest.get("config", {}), out, len(table), fingerprint, tta)
        ok, why = encoder_compatible(manifest["encoder"], identity)
        if not ok:
            raise EmbedError(f"cannot resume {out}: {why}")
    cfg = {**(config or {}), "n_inputs": int(len(table)), "ids_sha256": fingerprint, "tta": tta,
           "shard_size": int(shard_size or DEFAULT_SHARD_SIZE)}
    writer = StoreWriter(out, identity, config=cfg, exclusive=exclusive)
    first = writer.manifest["config"]
    if skipped is not None and len(skipped) and create:
        writer.record_skipped(skipped)
    return writer, ChunkPlan(int(first["n_inputs"]), int(first["shard_size"]))
