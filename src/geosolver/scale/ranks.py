"""Several processes on one node (``torchrun`` / ``accelerate launch``), no Ray.

Rank ``r`` of ``W`` embeds the chunks ``c ≡ r (mod W)`` and commits each one on its own
(:func:`geosolver.scale.chunks.write_chunk`); rank 0 creates the manifest first and, once every
chunk of every rank is committed, merges it (or run ``geosolver embed --merge-only --out STORE``).
The finished store equals a single-process run's: same shards, rows, order and failures.

Ranks come from the environment that ``torchrun`` and ``accelerate launch`` set: ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (the GPU index on this node).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pandas as pd

from geosolver.embed import EmbedError, EmbedResult
from geosolver.scale.chunks import (
    _check_table,
    chunk_meta,
    committed_chunks,
    embed_rows,
    merge_chunks,
    prepare_store,
    write_chunk,
)
from geosolver.store import EmbeddingStore

log = logging.getLogger(__name__)


def rank_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or ``None``
    when not launched by torchrun/accelerate (or with a world of 1)."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise EmbedError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {e}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise EmbedError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def embed_rank(
    table: pd.DataFrame,
    encoder,
    out: str | os.PathLike,
    rank: int,
    world_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_size: int | None = None,
    tta: str | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    skipped: pd.DataFrame | None = None,
    merge: bool = True,
    wait_s: float = 24 * 3600.0,
) -> EmbedResult:
    """Embed this rank's chunks of ``table`` into the store at ``out``.

    Args:
        table: the reader table (every rank must read the same one, in the same order).
        encoder: a loaded encoder (on this rank's device).
        out: store directory, on a filesystem every rank sees.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of processes.
        batch_size, num_workers, shard_size, tta, progress, config, skipped: as
            :func:`geosolver.embed.embed_table`.
        merge: rank 0 waits for every chunk and merges the manifest.
        wait_s: how long rank > 0 waits for the manifest, and rank 0 for the other ranks.

    Returns:
        :class:`~geosolver.embed.EmbedResult` for this rank's work (``store`` is complete only
        on the merging rank).
    """
    from tqdm.auto import tqdm

    if not 0 <= rank < world_size:
        raise EmbedError(f"rank {rank} outside world size {world_size}")
    table = _check_table(table)
    cfg = {**(config or {}), "engine": "ranks", "world_size": int(world_size)}
    plan = prepare_store(out, encoder.identity(), table, shard_size, tta, cfg, skipped, create=rank == 0, wait_s=wait_s)
    done = committed_chunks(out)
    mine = [c for c in range(plan.n_chunks) if c % world_size == rank and c not in done]
    t0 = time.perf_counter()
    n_ok = n_fail = 0
    ids = table["id"].astype(str).to_numpy()
    bar = tqdm(total=sum(plan.bounds(c)[1] - plan.bounds(c)[0] for c in mine), unit="img",
               disable=not progress, desc=f"embed rank {rank}/{world_size}", position=rank)
    try:
        for c in mine:
            lo, hi = plan.bounds(c)
            rows, emb, fails = embed_rows(table, lo, hi, encoder, batch_size, num_workers, tta)
            write_chunk(out, c, emb, chunk_meta(table, rows), [{"id": ids[i], "reason": r} for i, r in fails], hi - lo)
            n_ok += len(rows)
            n_fail += len(fails)
            bar.update(hi - lo)
    finally:
        bar.close()
    secs = time.perf_counter() - t0
    if rank == 0 and merge:
        deadline = time.monotonic() + wait_s
        while len(committed_chunks(out)) < plan.n_chunks and time.monotonic() < deadline:
            time.sleep(0.5)
        store = merge_chunks(out, {"last_run": {"seconds": round(secs, 3), "rows": n_ok, "failures": n_fail, "world_size": world_size}})
    else:
        store = EmbeddingStore(out)
    return EmbedResult(store=store, rows_embedded=n_ok, failures=n_fail, seconds=secs, resumed_from=sum(plan.bounds(c)[1] - plan.bounds(c)[0] for c in done))
