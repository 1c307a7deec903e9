"""Building an index: :class:`BuildConfig` → :func:`build` → :class:`BuildResult`.

The build trains the IVF quantisers on a sample, streams the store into the index batch by batch,
then (IVF kinds) measures recall@10 against exact search on store rows held out of the training
sample: the cheapest ``nprobe`` (and, for ``ivfpq``, ``rerank``) reaching ``target_recall`` on one
held-out sample is chosen (:func:`~geosolver.index.recall.tune_search`), and the recall of the chosen
settings is reported on a second, disjoint one. Both land in the index's ``.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from geosolver.progress import tqdm

from geosolver.errors import IndexBuildError, StaleIndexError, StoreError
from geosolver.files import sha256_file
from geosolver.store import EmbeddingStore

from .backend import faiss_error, faiss_module, iter_batches, release_pages, set_threads, summarised_faiss_warnings
from .config import KINDS, BuildConfig  # re-exported
from .persist import index_paths, read_index_files, store_fingerprint
from .plan import default_nlist, default_train_size, plan_ivfpq, rerank_from
from .recall import exact_topk, nprobe_ladder, timed_recall, tune_search
from .search import KnnIndex

log = logging.getLogger(__name__)

RECALL_K = 10
DEFAULT_RECALL_QUERIES = 1000
RERANK_LADDER = (10, 20, 40)


@dataclass
class BuildResult:
    """What :func:`build` made and measured."""

    index: KnnIndex
    seconds: float
    recall: dict | None = None  # {"recall_at_10", "queries_per_s", "recall_queries"} of the chosen settings on the report sample
    tuning: list[dict] = field(default_factory=list)  # every (nprobe, rerank) measured on the tuning sample


def _check(cfg: BuildConfig, n: int) -> None:
    if cfg.kind not in KINDS:
        raise IndexBuildError(f"unknown index kind {cfg.kind!r}; choose one of {', '.join(KINDS)}")
    if n == 0:
        raise IndexBuildError(f"gallery store {cfg.store} is empty: nothing to index")
    if cfg.memory_budget_gb is not None and cfg.kind != "ivfpq":
        raise IndexBuildError(f"--memory-budget-gb applies to ivfpq only (kind {cfg.kind!r} keeps every vector as float32)")
    if not 0 < cfg.target_recall <= 1:
        raise IndexBuildError(f"target recall must be in (0, 1], got {cfg.target_recall}")


def _train(index: Any, store: EmbeddingStore, kind: str, sample: np.ndarray) -> None:
    x = store.embeddings(sample)
    release_pages(store)
    try:
        with summarised_faiss_warnings(f"{kind} training on {len(sample):,} rows"):
            index.train(x)
    except RuntimeError as e:
        raise IndexBuildError(f"faiss could not train the {kind} index on {len(sample):,} rows: {faiss_error(e)}") from None


def _ivf_index(cfg: BuildConfig, store: EmbeddingStore, settings: dict, nlist: int | None, pq_m: int | None) -> tuple[Any, np.ndarray]:
    """An untrained IVF / IVF-PQ index and its training rows (settings filled in)."""
    f = faiss_module()
    n, d = len(store), store.dim
    nlist = int(nlist or default_nlist(n))
    if nlist < 1 or nlist > n:
        raise IndexBuildError(f"nlist must be in [1, {n}] (store rows), got {nlist}")
    quantizer = f.IndexFlatIP(d)
    if cfg.kind == "ivf":
        index = f.IndexIVFFlat(quantizer, d, nlist, f.METRIC_INNER_PRODUCT)
        min_train = 39 * nlist
    else:
        if pq_m is None:
            pq_m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if d % m == 0)
        if pq_m < 1 or d % pq_m:
            raise IndexBuildError(f"pq_m={pq_m} must divide the embedding dim {d}")
        index = f.IndexIVFPQ(quantizer, d, nlist, int(pq_m), int(cfg.pq_bits), f.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # only serves polysemous Hamming filtering, which we don't use; slow
        min_train = max(39 * nlist, 39 * (1 << cfg.pq_bits))
        settings.update(pq_m=int(pq_m), pq_bits=int(cfg.pq_bits))
    index.cp.seed = int(cfg.seed)
    n_train = default_train_size(n, nlist, min_train) if cfg.train_size is None else min(n, int(cfg.train_size))
    if cfg.kind == "ivfpq" and n_train < (1 << cfg.pq_bits):
        raise IndexBuildError(
            f"ivfpq with pq_bits={cfg.pq_bits} trains {1 << cfg.pq_bits} centroids per sub-quantiser and needs at least "
            f"{1 << cfg.pq_bits} training rows; {'the store has' if n_train == n else 'train_size gives'} {n_train}: "
            f"use --kind flat (exact) or ivf for a gallery this small"
        )
    if n_train < nlist:
        raise IndexBuildError(f"{n_train} training rows cannot train nlist={nlist} cells; raise train_size or lower nlist")
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    settings.update(nlist=nlist, train_size=int(n_train))
    return index, sample


def _recall_samples(n: int, train_rows: np.ndarray, per_sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint samples of store rows (tuning, report), drawn from rows outside the training
    sample when there are enough of them; with fewer than 2 rows to draw from, both are the same."""
    pool = np.setdiff1d(np.arange(n), train_rows, assume_unique=True)
    if pool.size < 2 * per_sample:
        pool = np.arange(n)
    m = min(per_sample, pool.size // 2)
    if m == 0:
        return pool, pool
    pick = np.random.default_rng(seed + 1).choice(pool, size=2 * m, replace=False)
    return np.sort(pick[:m]), np.sort(pick[m:])


def _tune_and_report(idx: KnnIndex, cfg: BuildConfig, store: EmbeddingStore, train_rows: np.ndarray, per_sample: int) -> tuple[dict, list[dict]]:
    tune_rows, report_rows = _recall_samples(len(store), train_rows, per_sample, cfg.seed)
    rows = np.concatenate([tune_rows, report_rows])
    q = store.embeddings(rows)
    exact = exact_topk(store, q, RECALL_K, batch_size=cfg.batch_size)  # one pass over the store for both samples
    qt, et = q[: len(tune_rows)], exact[: len(tune_rows)]
    qr, er = q[len(tune_rows) :], exact[len(tune_rows) :]
    trials: list[dict] = []
    if idx.kind != "flat" and (cfg.nprobe is None or (idx.kind == "ivfpq" and cfg.rerank is None)):
        nprobes = [cfg.nprobe] if cfg.nprobe is not None else nprobe_ladder(idx.settings["nlist"])
        reranks = [cfg.rerank] if (idx.kind != "ivfpq" or cfg.rerank is not None) else list(RERANK_LADDER)
        chosen, trials = tune_search(idx, qt, et, cfg.target_recall, nprobes, reranks if idx.kind == "ivfpq" else [None])
        idx.settings.update(target_recall=cfg.target_recall, target_reached=chosen["reached"], tuning_query_rows=tune_rows.tolist())
        if not chosen["reached"]:
            log.warning("recall@%d %.3f < target %.3f at the best setting tried (nprobe %d, rerank %s): raise --pq-m or --rerank, or use --kind ivf",
                        RECALL_K, chosen["recall"], cfg.target_recall, chosen["nprobe"], chosen["rerank"])
    recall, qps = timed_recall(idx, qr, er) if len(report_rows) else (float("nan"), float("nan"))
    report = {f"recall_at_{RECALL_K}": round(recall, 4), "recall_queries": int(len(report_rows)), "queries_per_s": round(qps, 1)}
    idx.settings.update(report, recall_query_rows=report_rows.tolist())
    return report, trials


def build(cfg: BuildConfig, store: EmbeddingStore | None = None) -> BuildResult:
    """Build a kNN index over every row of ``cfg.store`` (not saved: call ``result.index.save()``).

    Args:
        cfg: the settings.
        store: ``cfg.store`` already opened (its mapped shards are reused), else it is opened here.

    Raises:
        IndexBuildError: unknown kind, empty store, bad nlist / pq_m / budget.
    """
    t0 = time.perf_counter()
    store = store if store is not None else EmbeddingStore(cfg.store)
    n, d = len(store), store.dim
    _check(cfg, n)
    set_threads(cfg.threads)
    settings: dict[str, Any] = {"kind": cfg.kind, "metric": "inner_product"}
    nlist, pq_m, where = cfg.nlist, cfg.pq_m, None
    if cfg.memory_budget_gb is not None:
        plan = plan_ivfpq(n, d, cfg.memory_budget_gb, batch_size=cfg.batch_size, train_size=cfg.train_size, nlist=nlist)
        nlist, pq_m, where = nlist or plan["nlist"], pq_m or plan["pq_m"], plan["rerank_from"]
        settings.update(memory_budget_gb=float(cfg.memory_budget_gb), estimated_bytes=plan["bytes"])
    train_rows = np.arange(0)
    if cfg.kind == "flat":
        index = faiss_module().IndexFlatIP(d)
    else:
        index, train_rows = _ivf_index(cfg, store, settings, nlist, pq_m)
        log.info("training %s index (nlist=%d) on %d of %d rows", cfg.kind, settings["nlist"], len(train_rows), n)
        _train(index, store, cfg.kind, train_rows)
        settings["nprobe"] = int(cfg.nprobe or max(1, settings["nlist"] // 16))  # replaced by the tuned value below
        if cfg.kind == "ivfpq":
            settings.update(rerank=int(RERANK_LADDER[0] if cfg.rerank is None else cfg.rerank), rerank_from=where or rerank_from(n, d, None))
    with tqdm(total=n, desc=f"index {cfg.kind}", unit="vec", disable=not cfg.progress, leave=False) as bar:
        for _, batch in iter_batches(store, cfg.batch_size):
            index.add(batch)
            bar.update(batch.shape[0])
    idx = KnnIndex(index, cfg.kind, settings, store_fingerprint(store), store=store, gpu=cfg.gpu)
    per_sample = cfg.recall_queries if cfg.recall_queries is not None else (0 if cfg.kind == "flat" else DEFAULT_RECALL_QUERIES)
    report, trials = _tune_and_report(idx, cfg, store, train_rows, per_sample) if per_sample > 0 else (None, [])
    return BuildResult(index=idx, seconds=time.perf_counter() - t0, recall=report, tuning=trials)


def build_index(store: EmbeddingStore | str | os.PathLike, kind: str = "flat", **settings: Any) -> KnnIndex:
    """Build a kNN index over every row of ``store``: :func:`build` with a :class:`BuildConfig`
    of these settings (its fields), returning the index only."""
    opened = store if isinstance(store, EmbeddingStore) else None
    cfg = BuildConfig(store=str(opened.path if opened is not None else store), kind=kind, **settings)
    return build(cfg, store=opened).index


def load_index(path: str | os.PathLike, store: EmbeddingStore | str | os.PathLike | None = None, check: bool = True, gpu: bool | None = None) -> KnnIndex:
    """Load a saved index (``.faiss`` path, or a store directory with a single saved index).

    Args:
        path: the ``.faiss`` file or the store directory.
        store: the store it belongs to; default the store it was saved next to.
        check: refuse an index whose store fingerprint differs from ``store``'s.

    Raises:
        IndexBuildError: no such index / unreadable settings.
        StaleIndexError: the store changed since the index was built.
    """
    index, meta, store = read_index_files(path, store, check)
    return KnnIndex(index, meta["kind"], meta.get("settings", {}), meta["store_fingerprint"], store=store, gpu=gpu)


def index_for_store(store: EmbeddingStore | str | os.PathLike, kind: str = "flat", save: bool | None = None, rebuild: bool = False, **params: Any) -> KnnIndex:
    """Load ``STORE/index-<kind>.faiss`` if it exists and matches the store, else build it.

    Args:
        store: the gallery store (or its path).
        kind: ``flat``, ``ivf`` or ``ivfpq``.
        save: write a freshly built index next to the store; default: yes for IVF kinds
            (training is costly), no for flat (cheap to rebuild, and it would store the
            vectors a second time as float32).
        rebuild: ignore a saved index.
        **params: :class:`BuildConfig` settings (nlist, pq_m, nprobe, rerank, ...). A saved
            index built with different nlist / pq_m is rebuilt; nprobe / rerank are applied.
    """
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    fpath, _ = index_paths(store.path, kind)
    if fpath.exists() and not rebuild:
        try:
            idx = load_index(fpath, store=store)
            structural = {k: params[k] for k in ("nlist", "pq_m") if params.get(k) is not None}
            if all(idx.settings.get(k) == v for k, v in structural.items()):
                idx.set_nprobe(params.get("nprobe"))
                if params.get("rerank") is not None:
                    idx.settings["rerank"] = int(params["rerank"])
                return idx
            log.info("saved %s index has other settings than asked (%s); rebuilding", kind, structural)
        except StaleIndexError as e:
            log.warning("%s; rebuilding", e)
    idx = build_index(store, kind=kind, **params)
    if save if save is not None else kind != "flat":
        try:
            idx.save()
        except OSError as e:  # read-only gallery: keep the in-memory index
            log.warning("could not save index next to %s: %s", store.path, e)
    return idx



def verify_saved_indexes(store: EmbeddingStore) -> list[str]:
    """One line per saved ``index-*.faiss`` beside ``store`` that is unreadable, stale, or not the
    file its ``.json`` records (sha256, vector count, dim); ``geosolver info --verify`` adds these
    to :meth:`EmbeddingStore.verify`'s."""
    problems = []
    for f in sorted(store.path.glob("index-*.faiss")):
        try:
            record = json.loads(f.with_suffix(".json").read_text())
            digest = record.get("sha256") if isinstance(record, dict) else None
            if digest is not None and sha256_file(f) != digest:
                problems.append(f"{f} checksum mismatch with {f.with_suffix('.json').name} (the file was replaced or damaged)")
                continue
            load_index(f, store=store)
        except (OSError, ValueError) as e:
            problems.append(f"{f}: its record {f.with_suffix('.json').name} cannot be read ({type(e).__name__}: {e})")
        except (IndexBuildError, StoreError) as e:
            problems.append(str(e))
    return problems
