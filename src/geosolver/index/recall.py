"""Recall measurement: exact top-k by streaming the store, recall@k of an index against it, and
the search-setting tuning that picks the cheapest ``nprobe`` (and ``rerank``) reaching a target
recall on a held-out sample of the store's own rows."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from geosolver.store import EmbeddingStore

from .backend import as_queries, iter_batches
from .plan import EXACT_WORK_BYTES
from .search import KnnIndex

PLATEAU = 0.001  # doubling nprobe gained less recall than this: the PQ codes, not the cells, limit recall


def exact_topk(store: EmbeddingStore, queries: np.ndarray, k: int, batch_size: int = 65536) -> np.ndarray:
    """Exact top-``k`` store rows (inner product) of each query, streaming the store batch by batch.

    Args:
        store: the gallery store (never loaded whole: one float32 batch at a time).
        queries: ``(q, dim)`` float32.
        k: neighbours per query.

    Returns:
        ``(q, k)`` int64 store rows, best first.
    """
    q = as_queries(queries, store.dim)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for off, batch in iter_batches(store, batch_size):
        kk = min(k, batch.shape[0])
        # similarities (4 B) + argpartition's indices (8 B) of a block of queries stay under EXACT_WORK_BYTES
        qb = max(1, EXACT_WORK_BYTES // (12 * batch.shape[0]))
        top_s = np.empty((q.shape[0], kk), np.float32)
        top_i = np.empty((q.shape[0], kk), np.int64)
        for s in range(0, q.shape[0], qb):
            sims = q[s : s + qb] @ batch.T
            part = np.argpartition(sims, sims.shape[1] - kk, axis=1)[:, -kk:]
            top_s[s : s + qb] = np.take_along_axis(sims, part, 1)
            top_i[s : s + qb] = part + off
            del sims, part
        best_s = np.concatenate([best_s, top_s], axis=1)
        best_i = np.concatenate([best_i, top_i], axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k (``-1`` rows never count)."""
    kk = exact.shape[1]
    return float(np.mean([len(set(a[a >= 0]) & set(e)) / kk for a, e in zip(approx, exact)]))


def timed_recall(index: KnnIndex, queries: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """``(recall@k, queries/s)`` of ``index`` on ``queries`` against their ``exact`` top-k."""
    t0 = time.perf_counter()
    _, approx = index.search(queries, exact.shape[1])
    qps = len(queries) / max(time.perf_counter() - t0, 1e-9)
    return recall_at(approx, exact), qps


def measure_recall(index: KnnIndex, store: EmbeddingStore, n_queries: int = 1000, k: int = 10, seed: int = 1, rows: np.ndarray | None = None) -> dict:
    """recall@k of ``index`` against exact search, with store rows as queries (``rows``, else
    ``n_queries`` random ones): each query is itself a store row, as a gallery photo re-submitted
    would be.

    Returns:
        ``{"recall_at_<k>", "recall_queries", "recall_query_rows", "queries_per_s"}``.
    """
    n = len(store)
    if rows is None:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    q = store.embeddings(rows)
    recall, qps = timed_recall(index, q, exact_topk(store, q, k))
    return {f"recall_at_{k}": round(recall, 4), "recall_queries": int(len(rows)), "recall_query_rows": np.asarray(rows).tolist(),
            "queries_per_s": round(qps, 1)}


def nprobe_ladder(nlist: int) -> list[int]:
    """The ``nprobe`` values tried: 1, 2, 4, ... up to ``min(nlist, max(64, nlist / 8))``."""
    top = min(nlist, max(64, nlist // 8))
    out, p = [], 1
    while p < top:
        out.append(p)
        p *= 2
    return out + [top]


def tune_search(index: KnnIndex, queries: np.ndarray, exact: np.ndarray, target: float, nprobes: Sequence[int], reranks: Sequence[int | None]) -> tuple[dict, list[dict]]:
    """The cheapest search settings that reach ``target`` recall@k on ``queries``.

    For each ``rerank`` in order (the first is the cheapest), ``nprobe`` climbs ``nprobes`` until
    recall reaches ``target`` — the first setting that does is chosen — or stops gaining
    (:data:`PLATEAU`: the PQ codes, not the cells, limit recall; a larger ``rerank`` is tried
    next). If nothing reaches the target, the setting with the best recall is chosen (the first
    of equals). The index is left with the chosen settings.

    Returns:
        ``(chosen, trials)``: ``chosen`` = ``{"nprobe", "rerank", "recall", "queries_per_s",
        "reached": bool}``; ``trials`` every setting measured, in order.
    """
    trials: list[dict] = []
    chosen = None
    for r in reranks:
        if r is not None:
            index.settings["rerank"] = int(r)
        index.search(queries[:1], exact.shape[1])  # one-off work (making the float16 re-rank copy) stays out of the timings
        prev = -1.0
        for p in nprobes:
            index.set_nprobe(p)
            recall, qps = timed_recall(index, queries, exact)
            trials.append({"nprobe": int(p), "rerank": r, "recall": round(recall, 4), "queries_per_s": round(qps, 1)})
            if recall >= target:
                chosen = {**trials[-1], "reached": True}
                break
            if recall - prev < PLATEAU:
                break
            prev = recall
        if chosen:
            break
    if chosen is None:
        best = max(trials, key=lambda t: t["recall"])  # max() keeps the first of equals
        chosen = {**best, "reached": False}
    if chosen["rerank"] is not None:
        index.settings["rerank"] = int(chosen["rerank"])
    index.set_nprobe(chosen["nprobe"])
    return chosen, trials
