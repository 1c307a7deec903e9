"""k-nearest-neighbour search over an :class:`~geosolver.store.EmbeddingStore` with faiss.

Similarity is the inner product of L2-normalised embeddings (= cosine similarity). Three kinds:

* ``flat`` (default): exact search (``IndexFlatIP``). Holds every vector as float32 in RAM
  (4 · dim bytes per row: 3 GB for 1 M × 768), fine below a few million rows.
* ``ivf``: inverted file over ``nlist`` k-means cells, exact vectors inside the cells
  (``IndexIVFFlat``); ``nprobe`` cells are visited per query. Same memory as flat, faster.
* ``ivfpq``: inverted file + product quantisation to ``pq_m`` bytes per vector
  (``IndexIVFPQ``): for tens of millions of rows. The quantisers are trained on a random
  sample of the store, then the store is streamed in batches (``store.iter_batches``): no more
  than one batch of float32 vectors is ever in RAM. Approximate; ``rerank`` re-scores
  ``rerank · k`` candidates with the exact vectors read from the store's memmap.

Row ids returned by :meth:`KnnIndex.search` are store row numbers (0 … len(store)-1).

A saved index lives next to its store as ``STORE/index-<kind>.faiss`` plus
``STORE/index-<kind>.json`` (settings, faiss version, and the store's shard checksums). An index
whose checksums no longer match the store's manifest is stale: :func:`load_index` refuses it
and :meth:`KnnIndex.for_store` rebuilds it.

GPU: when ``faiss.get_num_gpus() > 0`` (a faiss-gpu build) the index is copied to all GPUs for
search; it is always saved from its CPU copy.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from geosolver.errors import IndexBuildError, StaleIndexError
from geosolver.files import atomic_write_json, sha256_file
from geosolver.store import EmbeddingStore

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "ivfpq")
INDEX_FORMAT_VERSION = 1


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no "Loading faiss with AVX2" chatter
    import faiss

    return faiss


def set_threads(n: int | None) -> None:
    """Set the number of OpenMP threads faiss uses (``None`` leaves faiss' default)."""
    if n is not None:
        if n < 1:
            raise IndexBuildError(f"threads must be >= 1, got {n}")
        _faiss().omp_set_num_threads(int(n))


def num_gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    f = _faiss()
    return int(f.get_num_gpus()) if hasattr(f, "get_num_gpus") else 0


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


def default_nlist(n: int) -> int:
    """Inverted-list count for ``n`` rows: about ``4·sqrt(n)``, at most ``n / 39`` (faiss' minimum
    of 39 training points per centroid), at least 1."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


MAX_NLIST = 65536
PQ_MAX_M = 64
IVF_ID_BYTES = 8  # faiss stores an int64 id next to each code in the inverted lists
IVF_LIST_SLACK = 1.25  # inverted lists grow by reallocation; calibrated on benchmarks/scale.py (5 M x 768)
PQ_TRAIN_MAX = 256 * 256  # faiss trains PQ codebooks on at most max_points_per_centroid (256) · ksub (256) residuals
FAISS_ADD_BLOCK = 32768  # IndexIVFPQ.add encodes in blocks of this many rows (residuals + codes + coarse ids)
EXACT_WORK_BYTES = 64 * 2**20
RERANK_ROWS = 16384  # candidate rows re-scored per search block (gathered float32 vectors, ~2 · 50 MB at 768-d)  # exact_topk's similarity block (queries × batch rows) is kept under this


def _working_set_bytes(n: int, dim: int, n_train: int, batch_size: int) -> int:
    """The largest float32 working set of an IVF-PQ build (training, adding, measuring recall).

    * training: the float32 sample (``n_train·dim·4``) + faiss' copy of the sub-sample it trains
      the PQ codebooks on (when ``n_train`` > 65 536) + the residuals of that sub-sample
      (``min(n_train, 65 536)·dim·4``);
    * adding: one float32 batch + faiss' residuals of one 32 768-row block (+ the float16 slice
      it was converted from);
    * recall (exact search): one float32 batch + a bounded similarity block.
    """
    pq_train = min(n_train, PQ_TRAIN_MAX)
    train = n_train * dim * 4 + (pq_train if n_train > PQ_TRAIN_MAX else 0) * dim * 4 + pq_train * dim * 4
    b = min(batch_size, n)
    add = b * dim * 4 + b * dim * 2 + min(FAISS_ADD_BLOCK, b) * dim * 4 + min(FAISS_ADD_BLOCK, b) * (8 + 8 + 4)
    recall = b * dim * 4 + EXACT_WORK_BYTES
    return max(train, add, recall)


def plan_ivfpq(n: int, dim: int, memory_budget_gb: float, batch_size: int = 65536, train_size: int | None = None, nlist: int | None = None) -> dict:
    """IVF-PQ settings for ``n`` vectors of ``dim`` that fit ``memory_budget_gb`` (10^9 bytes) of RAM.

    Rule:

    * ``nlist`` = ``4·sqrt(n)`` rounded to the nearest power of two, capped at 65 536 and at the
      largest power of two ≤ ``n / 39`` (faiss wants ≥ 39 training points per centroid);
    * ``pq_m`` (bytes per vector at 8 bits) = the largest divisor of ``dim`` that is ≤ 64 and for
      which the estimated peak fits: ``1.25·n·(pq_m + 8)`` (codes + int64 ids in the inverted
      lists, with 25 % reallocation slack) + ``nlist·dim·4`` (coarse centroids) + ``256·dim·4``
      (PQ codebooks) + the largest float32 working set of the build (:func:`_working_set_bytes`):
      while training, the float32 sample plus faiss' residual copy of up to 65 536 of its rows;
      while adding, one float32 batch plus faiss' residuals of a 32 768-row block. The build
      releases the store's memory-mapped pages as it goes, so they do not add to the peak.

    A given ``nlist`` is kept (only ``pq_m`` is chosen).

    Returns:
        ``{"nlist", "pq_m", "bytes"}`` (``bytes``: the estimate for the chosen settings).

    Raises:
        IndexBuildError: not even ``pq_m = 1`` fits the budget (the message gives the minimum).
    """
    if n < 1 or dim < 1 or memory_budget_gb <= 0:
        raise IndexBuildError(f"plan_ivfpq needs n, dim and memory_budget_gb > 0 (got {n}, {dim}, {memory_budget_gb})")
    if not nlist:
        rule = 1 << max(0, int(round(math.log2(4.0 * math.sqrt(n)))))
        cap = 1 << max(0, int(math.floor(math.log2(max(1, n // 39)))))
        nlist = int(max(1, min(rule, MAX_NLIST, cap)))
    n_train = min(n, int(train_size or max(39 * nlist, 39 * 256, min(100 * nlist, 100_000))))
    fixed = nlist * dim * 4 + 256 * dim * 4 + _working_set_bytes(n, dim, n_train, batch_size)
    budget = memory_budget_gb * 1e9
    for m in sorted((m for m in range(1, min(dim, PQ_MAX_M) + 1) if dim % m == 0), reverse=True):
        total = int(IVF_LIST_SLACK * n * (m + IVF_ID_BYTES)) + fixed
        if total <= budget:
            return {"nlist": nlist, "pq_m": int(m), "bytes": int(total)}
    need = int(IVF_LIST_SLACK * n * (1 + IVF_ID_BYTES)) + fixed
    raise IndexBuildError(f"memory budget {memory_budget_gb} GB is too small for {n:,} x {dim} vectors: IVF-PQ needs at least {need / 1e9:.2f} GB")


def _release_pages(store: EmbeddingStore) -> None:
    """Drop the store's memory-mapped shard pages from this process (``MADV_DONTNEED``): the data
    stays in the page cache, but no longer counts in the build's resident memory."""
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for mm in list(getattr(store, "_mm", {}).values()):
        m = getattr(mm, "_mmap", None)
        base = mm.base
        while m is None and base is not None:  # a view of the memmap: find the mmap object
            m = base if isinstance(base, mmap.mmap) else getattr(base, "_mmap", None)
            base = getattr(base, "base", None)
        if isinstance(m, mmap.mmap):
            with contextlib.suppress(OSError, ValueError):
                m.madvise(advice)


def _iter_batches(store: EmbeddingStore, batch_size: int):
    """``store.iter_batches`` that releases the mapped pages after every batch."""
    for off, batch in store.iter_batches(batch_size=batch_size):
        yield off, batch
        _release_pages(store)


_FAISS_FEW_POINTS = re.compile(r"WARNING clustering (\d+) points to (\d+) centroids: please provide at least (\d+) training points")


@contextlib.contextmanager
def _summarised_faiss_warnings(what: str):
    """Capture what faiss prints from C++ on fd 2 (one "please provide at least N training points"
    line per k-means run: 64 for 64 PQ sub-quantisers) and log one summary line instead; other
    lines are passed on once each."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to tidy
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            few, other = [], []
            for line in text.splitlines():
                m = _FAISS_FEW_POINTS.search(line)
                if m:
                    few.append(tuple(int(g) for g in m.groups()))
                elif line.strip() and line not in other:
                    other.append(line)
            if other:
                sys.stderr.write("\n".join(other) + "\n")
                sys.stderr.flush()
            if few:
                pts, k, want = min(few)
                log.warning(
                    "%s: %d k-means run(s) had fewer training points than faiss recommends (%d points for %d centroids; "
                    "%d wanted): fine for a small store, but codebooks trained on more rows give better recall",
                    what, len(few), pts, k, want,
                )


def _faiss_error(e: BaseException) -> str:
    """The informative tail of a faiss C++ error (``Error in <signature> at file.cpp:N: <what>``)."""
    msg = " ".join(str(e).split())
    m = re.search(r"\.(?:cpp|h):\d+: (.*)$", msg)
    text = m.group(1) if m else msg
    text = re.sub(r"^Error: '.*?' failed: ", "", text)
    return text[:200]


def exact_topk(store: EmbeddingStore, queries: np.ndarray, k: int, batch_size: int = 65536) -> np.ndarray:
    """Exact top-``k`` store rows (inner product) of each query, streaming the store batch by batch.

    Args:
        store: the gallery store (never loaded whole: one float32 batch at a time).
        queries: ``(q, dim)`` float32.
        k: neighbours per query.

    Returns:
        ``(q, k)`` int64 store rows, best first.
    """
    q = _as_queries(queries, store.dim)
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_i = np.zeros((q.shape[0], 0), np.int64)
    for off, batch in _iter_batches(store, batch_size):
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


def measure_recall(index: "KnnIndex", store: EmbeddingStore, n_queries: int = 1000, k: int = 10, seed: int = 1) -> dict:
    """recall@k of ``index`` against exact search, with ``n_queries`` random store rows as queries.

    recall@k = mean over queries of |approximate top-k ∩ exact top-k| / k (each query is itself a
    store row, as a gallery photo re-submitted would be).

    Returns:
        ``{"recall_at_<k>", "recall_queries", "recall_query_rows", "queries_per_s"}``.
    """
    n = len(store)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n_queries, n), replace=False))
    q = store.embeddings(rows)
    t0 = time.perf_counter()
    _, approx = index.search(q, k)
    qps = len(rows) / max(time.perf_counter() - t0, 1e-9)
    exact = exact_topk(store, q, k)
    kk = exact.shape[1]
    recall = float(np.mean([len(set(a[a >= 0]) & set(e)) / kk for a, e in zip(approx, exact)]))
    return {f"recall_at_{k}": round(recall, 4), "recall_queries": int(len(rows)), "recall_query_rows": rows.tolist(),
            "queries_per_s": round(qps, 1)}


def _as_queries(q: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(q)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexBuildError(f"queries must have shape (n, {dim}), got {q.shape}")
    if not np.isfinite(q).all():
        raise IndexBuildError("queries contain NaN or inf")
    return np.ascontiguousarray(q, dtype=np.float32)


class KnnIndex:
    """A faiss index over one store's embeddings (ids = store row numbers).

    Use :func:`build_index`, :func:`load_index` or :meth:`KnnIndex.for_store` to get one.

    Attributes:
        kind: ``"flat"``, ``"ivf"`` or ``"ivfpq"``.
        settings: the build/search settings (nlist, pq_m, nprobe, rerank, ...).
        fingerprint: :func:`store_fingerprint` of the store it was built from.
        store: the store (used for exact re-ranking), or ``None``.
    """

    def __init__(self, index: Any, kind: str, settings: dict, fingerprint: dict, store: EmbeddingStore | None = None, gpu: bool | None = None):
        self.cpu_index = index
        self.kind = kind
        self.settings = dict(settings)
        self.fingerprint = fingerprint
        self.store = store
        self.dim = int(index.d)
        self._search_index = index
        use_gpu = num_gpus() > 0 if gpu is None else bool(gpu)
        if use_gpu and num_gpus() > 0:
            f = _faiss()
            self._search_index = f.index_cpu_to_all_gpus(index)
            self.settings["gpu"] = True
        self.set_nprobe(self.settings.get("nprobe"))

    @classmethod
    def from_embeddings(cls, emb: np.ndarray, gpu: bool | None = False) -> "KnnIndex":
        """An exact in-memory ``flat`` index (inner product) over ``(m, d)`` L2-normalised
        embeddings that are not in a store (e.g. training-time validation); ids = row numbers."""
        g = np.ascontiguousarray(emb, dtype=np.float32)
        if g.ndim != 2:
            raise IndexBuildError(f"embeddings must be (m, d), got shape {g.shape}")
        fi = _faiss().IndexFlatIP(g.shape[1])
        fi.add(g)
        fingerprint = {"rows": int(g.shape[0]), "dim": int(g.shape[1]), "in_memory": True}
        return cls(fi, "flat", {"kind": "flat", "metric": "inner_product"}, fingerprint, store=None, gpu=gpu)

    def __len__(self) -> int:
        return int(self.cpu_index.ntotal)

    def __repr__(self) -> str:
        return f"KnnIndex(kind={self.kind!r}, rows={len(self)}, dim={self.dim}, settings={self.settings})"

    def set_nprobe(self, nprobe: int | None) -> None:
        """Cells visited per query for IVF kinds (ignored for flat)."""
        if nprobe is None or self.kind == "flat":
            return
        f = _faiss()
        self.settings["nprobe"] = int(nprobe)
        space = f.GpuParameterSpace() if self.settings.get("gpu") and hasattr(f, "GpuParameterSpace") else f.ParameterSpace()
        space.set_index_parameter(self._search_index, "nprobe", int(nprobe))

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery rows of each query.

        Args:
            queries: ``(n, dim)`` embeddings (L2-normalised, any float dtype; cast to float32).
            k: neighbours per query; at most ``len(self)`` are returned.
            batch_size: queries per faiss call.

        Returns:
            ``(sims, rows)``: ``(n, k')`` float32 inner products, best first, and ``(n, k')`` int64
            store row numbers, with ``k' = min(k, len(self))``. With IVF kinds a row may be ``-1``
            (similarity ``-inf``) when the probed cells hold fewer than ``k'`` vectors.
        """
        q = _as_queries(queries, self.dim)
        if k < 1:
            raise IndexBuildError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            raise IndexBuildError("the index is empty (the gallery store has no rows)")
        k = min(int(k), len(self))
        rerank = int(self.settings.get("rerank") or 0)
        k_search = min(len(self), k * rerank) if (rerank > 1 and self.store is not None) else k
        if k_search > k:  # re-ranking reads k_search float32 vectors per query (twice): bound that to RERANK_ROWS rows
            batch_size = max(1, min(batch_size, RERANK_ROWS // k_search))
        sims = np.empty((q.shape[0], k), np.float32)
        rows = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], batch_size):
            d, i = self._search_index.search(q[s : s + batch_size], k_search)
            if k_search > k:
                d, i = self._rerank(q[s : s + batch_size], i, k)
            sims[s : s + batch_size] = d
            rows[s : s + batch_size] = i
        sims[rows < 0] = -np.inf
        return sims, rows

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of candidate rows (read from the store), top ``k`` kept."""
        uniq, inv = np.unique(np.where(cand < 0, 0, cand), return_inverse=True)
        vec = self.store.embeddings(uniq)  # (u, dim) float32
        exact = np.einsum("nd,nkd->nk", q, vec[inv.reshape(cand.shape)])
        exact[cand < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1).astype(np.float32), np.take_along_axis(cand, order, 1)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the index (``.faiss``) and its settings + store fingerprint (``.json``).

        Args:
            path: the ``.faiss`` file; default ``STORE/index-<kind>.faiss`` next to the store.

        Returns:
            The ``.faiss`` path.
        """
        if path is None:
            if self.store is None:
                raise IndexBuildError("save(): no path given and the index has no store")
            fpath, jpath = index_paths(self.store.path, self.kind)
        else:
            fpath = Path(path)
            jpath = fpath.with_suffix(".json")
        f = _faiss()
        tmp = fpath.with_name(fpath.name + f".tmp{os.getpid()}")
        f.write_index(self.cpu_index, str(tmp))
        os.replace(tmp, fpath)
        settings = {k: v for k, v in self.settings.items() if k != "gpu"}
        atomic_write_json(
            jpath,
            {
                "format_version": INDEX_FORMAT_VERSION,
                "kind": self.kind,
                "settings": settings,
                "rows": len(self),
                "dim": self.dim,
                "sha256": sha256_file(fpath),  # `geosolver info --verify` checks the .faiss file against it
                "faiss_version": getattr(f, "__version__", "?"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "store": str(self.store.path) if self.store is not None else None,
                "store_fingerprint": self.fingerprint,
            },
        )
        return fpath

    @classmethod
    def for_store(
        cls,
        store: EmbeddingStore | str | os.PathLike,
        kind: str = "flat",
        save: bool | None = None,
        rebuild: bool = False,
        **params: Any,
    ) -> "KnnIndex":
        """Load ``STORE/index-<kind>.faiss`` if it exists and matches the store, else build it.

        Args:
            store: the gallery store (or its path).
            kind: ``flat``, ``ivf`` or ``ivfpq``.
            save: write a freshly built index next to the store; default: yes for IVF kinds
                (training is costly), no for flat (cheap to rebuild, and it would store the
                vectors a second time as float32).
            rebuild: ignore a saved index.
            **params: :func:`build_index` settings (nlist, pq_m, nprobe, rerank, ...). A saved
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


def build_index(
    store: EmbeddingStore | str | os.PathLike,
    kind: str = "flat",
    nlist: int | None = None,
    pq_m: int | None = None,
    pq_bits: int = 8,
    nprobe: int | None = None,
    rerank: int = 10,
    train_size: int | None = None,
    batch_size: int = 65536,
    threads: int | None = None,
    gpu: bool | None = None,
    seed: int = 0,
    progress: bool = True,
    memory_budget_gb: float | None = None,
    recall_queries: int = 0,
) -> KnnIndex:
    """Build a kNN index over every row of ``store``.

    Args:
        store: the gallery store (or its path).
        kind: ``flat`` (exact), ``ivf`` (IVF-Flat) or ``ivfpq`` (IVF-PQ).
        nlist: inverted lists for IVF kinds; default :func:`default_nlist`.
        pq_m: PQ sub-quantisers (bytes per vector at 8 bits) for ``ivfpq``; must divide ``dim``;
            default the largest of 64, 48, 32, 16, 8, 4, 2, 1 that divides ``dim``.
        pq_bits: bits per sub-quantiser code.
        nprobe: cells visited per query; default ``max(1, nlist // 16)``.
        rerank: for ``ivfpq``: re-score ``rerank · k`` PQ candidates with the exact vectors read
            from the store memmap (0/1 = off). Default 10: on the 1 M × 768 benchmark recall@10
            rose from 0.40 to 0.90 for 17 % fewer queries/s (``benchmarks/knn.py``).
        train_size: rows sampled for training; default ``max(39·nlist, min(100·nlist, 100 000))``
            (and at least ``39·2^pq_bits`` for ivfpq), capped at the store size.
        batch_size: rows added per batch (the float32 RAM high-water mark besides the index).
        threads: faiss OpenMP threads (``None``: faiss' default).
        gpu: search on GPU; default when faiss sees one.
        seed: seed of the training sample and k-means.
        progress: show a progress bar while adding.
        memory_budget_gb: for ``ivfpq``: pick ``nlist`` and ``pq_m`` (when not given) with
            :func:`plan_ivfpq` so the index build fits this many GB of RAM.
        recall_queries: if > 0, measure recall@10 against exact (streamed) search with this many
            store rows as queries (:func:`measure_recall`); kept in ``settings`` and the saved JSON.

    Returns:
        A :class:`KnnIndex` (not saved; call :meth:`KnnIndex.save`).

    Raises:
        IndexBuildError: unknown kind, empty store, bad nlist / pq_m.
    """
    from geosolver.progress import tqdm

    f = _faiss()
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    if kind not in KINDS:
        raise IndexBuildError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    n, d = len(store), store.dim
    if n == 0:
        raise IndexBuildError(f"gallery store {store.path} is empty: nothing to index")
    set_threads(threads)
    settings: dict[str, Any] = {"kind": kind, "metric": "inner_product"}
    if memory_budget_gb is not None:
        if kind != "ivfpq":
            raise IndexBuildError(f"--memory-budget-gb applies to ivfpq only (kind {kind!r} keeps every vector as float32)")
        plan = plan_ivfpq(n, d, memory_budget_gb, batch_size=batch_size, train_size=train_size, nlist=nlist)
        nlist, pq_m = nlist or plan["nlist"], pq_m or plan["pq_m"]
        settings.update(memory_budget_gb=float(memory_budget_gb), estimated_bytes=plan["bytes"])
    if kind == "flat":
        index = f.IndexFlatIP(d)
    else:
        nlist = int(nlist or default_nlist(n))
        if nlist < 1 or nlist > n:
            raise IndexBuildError(f"nlist must be in [1, {n}] (store rows), got {nlist}")
        quantizer = f.IndexFlatIP(d)
        if kind == "ivf":
            index = f.IndexIVFFlat(quantizer, d, nlist, f.METRIC_INNER_PRODUCT)
            min_train = 39 * nlist
        else:
            if pq_m is None:
                pq_m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if d % m == 0)
            if pq_m < 1 or d % pq_m:
                raise IndexBuildError(f"pq_m={pq_m} must divide the embedding dim {d}")
            index = f.IndexIVFPQ(quantizer, d, nlist, int(pq_m), int(pq_bits), f.METRIC_INNER_PRODUCT)
            index.do_polysemous_training = False  # only serves polysemous Hamming filtering, which we don't use; slow
            min_train = max(39 * nlist, 39 * (1 << pq_bits))
            settings.update(pq_m=int(pq_m), pq_bits=int(pq_bits), rerank=int(rerank))
        if hasattr(index, "cp"):
            index.cp.seed = int(seed)
        n_train = min(n, int(train_size or max(min_train, min(100 * nlist, 100_000))))
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
        if kind == "ivfpq" and n_train < (1 << pq_bits):
            raise IndexBuildError(
                f"ivfpq with pq_bits={pq_bits} trains {1 << pq_bits} centroids per sub-quantiser and needs at least "
                f"{1 << pq_bits} training rows; {'the store has' if n_train == n else 'train_size gives'} {n_train}: "
                f"use --kind flat (exact) or ivf for a gallery this small"
            )
        if n_train < nlist:
            raise IndexBuildError(f"{n_train} training rows cannot train nlist={nlist} cells; raise train_size or lower nlist")
        log.info("training %s index (nlist=%d) on %d of %d rows", kind, nlist, n_train, n)
        x = store.embeddings(sample)
        _release_pages(store)
        try:
            with _summarised_faiss_warnings(f"{kind} training on {n_train:,} rows"):
                index.train(x)
        except RuntimeError as e:
            raise IndexBuildError(f"faiss could not train the {kind} index on {n_train:,} rows: {_faiss_error(e)}") from None
        del sample, x
        settings.update(nlist=nlist, nprobe=int(nprobe or max(1, nlist // 16)), train_size=int(n_train))
    with tqdm(total=n, desc=f"index {kind}", unit="vec", disable=not progress, leave=False) as bar:
        for _, batch in _iter_batches(store, batch_size):
            index.add(batch)
            bar.update(batch.shape[0])
    idx = KnnIndex(index, kind, settings, store_fingerprint(store), store=store, gpu=gpu)
    if recall_queries > 0:
        idx.settings.update(measure_recall(idx, store, n_queries=recall_queries))
    return idx


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
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("index-*.faiss"))
        if len(found) != 1:
            raise IndexBuildError(f"{p}: expected one saved index-<kind>.faiss, found {[x.name for x in found]}")
        p = found[0]
    jpath = p.with_suffix(".json")
    if not p.exists() or not jpath.exists():
        raise IndexBuildError(f"no saved index at {p} (needs {p.name} and {jpath.name}); build one with `geosolver index build`")
    def rebuild_hint(st: Any) -> str:
        where = st.path if isinstance(st, EmbeddingStore) else p.parent
        return f"build it again with `geosolver index build {where} --kind {kind_of_file}`"

    kind_of_file = p.stem.removeprefix("index-") or "flat"
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
        index = _faiss().read_index(str(p))
    except RuntimeError as e:  # truncated, garbage, another faiss' format: faiss says so in C++ terms
        raise IndexBuildError(f"saved index {p} is damaged and cannot be read ({_faiss_error(e)}); {rebuild_hint(store)}") from None
    rows = meta.get("rows", store_fingerprint(store)["rows"] if check else None)
    if int(index.d) != store.dim or (rows is not None and int(index.ntotal) != int(rows)):
        raise IndexBuildError(
            f"saved index {p} holds {int(index.ntotal):,} vectors of dim {int(index.d)}, but its description says "
            f"{rows} rows of dim {store.dim}: the file was replaced or damaged; {rebuild_hint(store)}"
        )
    return KnnIndex(index, meta["kind"], meta.get("settings", {}), meta["store_fingerprint"], store=store, gpu=gpu)
