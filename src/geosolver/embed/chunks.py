"""decode → embed → commit, chunk by chunk: the only place rows become a shard.

:func:`iter_chunks` runs the one decode path (:mod:`geosolver.embed.decode`) over the rows of
some chunks with batches that never straddle a chunk, embeds them, and yields one
:class:`ChunkOutput` per chunk; :func:`commit` turns a :class:`ChunkOutput` into shard
``shard-{c:05d}`` through :meth:`geosolver.store.StoreWriter.commit_chunk`. Engines differ only
in which process runs which chunks (and, for Ray, in where the commit happens).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from geosolver.embed.decode import ImageRows, make_loader
from geosolver.embed.job import ChunkPlan
from geosolver.encoders import Encoder
from geosolver.errors import EmbedError
from geosolver.store import ShardInfo, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class ChunkOutput:
    """One embedded chunk, ready to commit.

    Attributes:
        chunk: chunk index; covers input rows ``[lo, hi)``.
        ok_rows: int64 input rows that embedded, ascending.
        embeddings: float32 ``(len(ok_rows), dim)``.
        failures: ``(row, reason)`` for the inputs that could not be decoded, ascending.
    """

    chunk: int
    lo: int
    hi: int
    ok_rows: np.ndarray
    embeddings: np.ndarray
    failures: list = field(default_factory=list)


def chunk_batches(plan: ChunkPlan, chunks: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row batches over ``chunks`` (in the given order): at most ``batch_size`` rows, never two chunks."""
    out = []
    for c in chunks:
        lo, hi = plan.bounds(c)
        out.extend(list(range(s, min(hi, s + batch_size))) for s in range(lo, hi, batch_size))
    return out


def iter_chunks(
    table: pd.DataFrame,
    plan: ChunkPlan,
    chunks: Sequence[int],
    encoder: Encoder,
    batch_size: int = 64,
    num_workers: int = 0,
    tta: str | None = None,
    bar=None,
) -> Iterator[ChunkOutput]:
    """Decode and embed the rows of ``chunks``; yield each chunk as soon as its last batch is done.

    Args:
        table: the job's dataset table (``source`` column read).
        plan: the job's :class:`ChunkPlan`.
        chunks: chunk indices to run, in order.
        encoder: a loaded encoder (its ``preprocessor`` and ``min_side`` drive decoding).
        batch_size: images per model call.
        num_workers: DataLoader decode workers (0: decode in this process).
        tta: test-time augmentation for ``encoder.embed_pixels``.
        bar: a tqdm bar to advance by the inputs of each batch (optional).
    """
    chunks = list(chunks)
    if not chunks:
        return
    ds = ImageRows(table["source"].to_numpy(dtype=object), encoder.preprocessor, encoder.min_side)
    pin = encoder.device.type == "cuda"
    loader = make_loader(ds, num_workers=num_workers, batch_sampler=chunk_batches(plan, chunks, batch_size), pin_memory=pin)
    pending = iter(chunks)
    cur = next(pending)
    rows, embs, fails = [], [], []
    n_fail = 0
    for batch in loader:
        c = int(batch.rows[0]) // plan.shard_size
        while c != cur:  # a chunk with every batch done (batches arrive in chunk order)
            yield _output(plan, cur, rows, embs, fails, encoder.dim)
            rows, embs, fails = [], [], []
            cur = next(pending)
        if batch.pixels is not None:
            rows.append(batch.ok_rows)
            embs.append(encoder.embed_pixels(batch.pixels, tta=tta))
        fails.extend(batch.errors)
        for r, why in batch.errors:
            log.debug("failed row %d: %s", r, why)
        if bar is not None:
            n_fail += len(batch.errors)
            bar.update(len(batch.rows))
            bar.set_postfix(failed=n_fail, refresh=False)
    yield _output(plan, cur, rows, embs, fails, encoder.dim)  # every planned chunk has >= 1 row


def _output(plan: ChunkPlan, c: int, rows, embs, fails, dim: int) -> ChunkOutput:
    lo, hi = plan.bounds(c)
    ok = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    emb = np.concatenate(embs) if embs else np.zeros((0, dim), np.float32)
    return ChunkOutput(c, lo, hi, ok, emb, sorted(fails))


def commit(writer: StoreWriter, table: pd.DataFrame, out: ChunkOutput) -> ShardInfo:
    """Commit one embedded chunk as its shard: metadata = the table's rows, failures by id.

    Raises:
        geosolver.errors.EmbedError: ``out`` does not cover exactly its chunk's input rows.
    """
    fail_rows = [r for r, _ in out.failures]
    covered = np.sort(np.concatenate([out.ok_rows, np.asarray(fail_rows, np.int64)]))
    if not np.array_equal(covered, np.arange(out.lo, out.hi)):
        raise EmbedError(f"chunk {out.chunk}: embedded rows do not cover exactly [{out.lo}, {out.hi})")
    ids = table["id"].astype(str).to_numpy()
    meta = table.iloc[out.ok_rows].reset_index(drop=True)
    failures = [{"id": ids[r], "reason": why} for r, why in out.failures]
    return writer.commit_chunk(out.chunk, out.embeddings, meta, failures, n_inputs=out.hi - out.lo)
