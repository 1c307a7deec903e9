""":class:`KnnIndex`: search a faiss index over one store's rows, with exact re-ranking of IVF-PQ
candidates from a float16 copy in RAM (scored by faiss' ``IndexRefine``) or from the store."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from geosolver.errors import IndexBuildError
from geosolver.store import EmbeddingStore

from .backend import as_queries, faiss_module, num_gpus, release_pages
from .persist import index_paths, write_index_files
from .plan import RERANK_ROWS

log = logging.getLogger(__name__)


def fp16_copy(store: EmbeddingStore) -> Any:
    """A faiss ``IndexScalarQuantizer`` (fp16, inner product) holding every store row: the store's
    float16 bytes are copied shard by shard straight into faiss' code array (no float32 detour)."""
    f = faiss_module()
    sq = f.IndexScalarQuantizer(store.dim, f.ScalarQuantizer.QT_fp16, f.METRIC_INNER_PRODUCT)
    n, row_bytes = len(store), 2 * store.dim
    sq.codes.resize(n * row_bytes)
    codes = f.rev_swig_ptr(sq.codes.data(), n * row_bytes).view(np.float16).reshape(n, store.dim) if n else None
    for i, off in enumerate(store.offsets[: len(store.shards)]):
        mm = store.shard_embeddings(i)
        codes[int(off) : int(off) + mm.shape[0]] = mm
        release_pages(store)
    sq.ntotal = n
    return sq


class KnnIndex:
    """A faiss index over one store's embeddings (ids = store row numbers).

    Use :func:`~geosolver.index.build_index`, :func:`~geosolver.index.load_index` or
    :func:`geosolver.index.index_for_store` to get one.

    Attributes:
        kind: ``"flat"``, ``"ivf"`` or ``"ivfpq"``.
        settings: the build/search settings (nlist, pq_m, nprobe, rerank, rerank_from, ...).
        fingerprint: :func:`~geosolver.index.store_fingerprint` of the store it was built from.
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
        self._refine: Any = None  # IndexRefine over a float16 copy, made on the first re-ranked search
        use_gpu = num_gpus() > 0 if gpu is None else bool(gpu)
        if use_gpu and num_gpus() > 0:
            self._search_index = faiss_module().index_cpu_to_all_gpus(index)
            self.settings["gpu"] = True
        self.set_nprobe(self.settings.get("nprobe"))

    @classmethod
    def from_embeddings(cls, emb: np.ndarray, gpu: bool | None = False) -> "KnnIndex":
        """An exact in-memory ``flat`` index (inner product) over ``(m, d)`` L2-normalised
        embeddings that are not in a store (e.g. training-time validation); ids = row numbers."""
        g = np.ascontiguousarray(emb, dtype=np.float32)
        if g.ndim != 2:
            raise IndexBuildError(f"embeddings must be (m, d), got shape {g.shape}")
        fi = faiss_module().IndexFlatIP(g.shape[1])
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
        f = faiss_module()
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
        q = as_queries(queries, self.dim)
        if k < 1:
            raise IndexBuildError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            raise IndexBuildError("the index is empty (the gallery store has no rows)")
        k = min(int(k), len(self))
        rerank = int(self.settings.get("rerank") or 0)
        k_search = min(len(self), k * rerank) if (rerank > 1 and self.store is not None) else k
        searcher = self._search_index
        if k_search > k and self.settings.get("rerank_from") == "memory" and not self.settings.get("gpu"):
            searcher = self._refine_index()
            searcher.k_factor = k_search / k
            k_search = k  # faiss re-scores k · k_factor candidates itself
        elif k_search > k:  # re-ranking from the store reads k_search vectors per query: bound that to RERANK_ROWS rows
            batch_size = max(1, min(batch_size, RERANK_ROWS // k_search))
        sims = np.empty((q.shape[0], k), np.float32)
        rows = np.empty((q.shape[0], k), np.int64)
        for s in range(0, q.shape[0], batch_size):
            d, i = searcher.search(q[s : s + batch_size], k_search)
            if k_search > k:
                d, i = self._rerank_from_store(q[s : s + batch_size], i, k)
            sims[s : s + batch_size] = d
            rows[s : s + batch_size] = i
        sims[rows < 0] = -np.inf
        return sims, rows

    def _refine_index(self) -> Any:
        if self._refine is None:
            self._refine = faiss_module().IndexRefine(self._search_index, fp16_copy(self.store))
        return self._refine

    def _rerank_from_store(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of candidate rows gathered (float16) from the store, top ``k`` kept."""
        vec = self.store.embeddings(np.where(cand < 0, 0, cand).ravel(), dtype=np.float16)
        exact = np.einsum("nd,nkd->nk", q, vec.astype(np.float32).reshape(*cand.shape, -1))
        exact[cand < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)

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
        settings = {k: v for k, v in self.settings.items() if k != "gpu"}
        write_index_files(self.cpu_index, fpath, jpath, self.kind, settings, self.fingerprint, self.store)
        return fpath
