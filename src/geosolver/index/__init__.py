"""k-nearest-neighbour search over an :class:`~geosolver.store.EmbeddingStore` with faiss.

Similarity is the inner product of L2-normalised embeddings (= cosine similarity). Three kinds:
* ``flat`` (default): exact search (``IndexFlatIP``). Holds every vector as float32 in RAM
  (4 · dim bytes per row: 3 GB for 1 M × 768), fine below a few million rows.
* ``ivf``: inverted file over ``nlist`` k-means cells, exact vectors inside the cells
  (``IndexIVFFlat``); ``nprobe`` cells are visited per query. Same memory as flat, faster.
* ``ivfpq``: inverted file + product quantisation to ``pq_m`` bytes per vector
  (``IndexIVFPQ``): for tens of millions of rows. The quantisers are trained on a random
  sample of the store, then the store is streamed in batches: no more than one batch of float32
  vectors is ever in RAM. Approximate; ``rerank`` re-scores ``rerank · k`` candidates with the
  exact vectors — from a float16 copy in RAM when it fits (``rerank_from: memory``), else read
  from the store's memmap.

The build picks the cheapest ``nprobe`` (and ``rerank``) that reaches a target recall@10 on store
rows held out of the training sample, and reports recall on a second held-out sample.

Row ids returned by :meth:`KnnIndex.search` are store row numbers (0 … len(store)-1).

A saved index lives next to its store as ``STORE/index-<kind>.faiss`` plus
``STORE/index-<kind>.json`` (settings, faiss version, and the store's shard checksums). An index
whose checksums no longer match the store's manifest is stale: :func:`load_index` refuses it
and :func:`geosolver.index.index_for_store` rebuilds it.

GPU: when ``faiss.get_num_gpus() > 0`` (a faiss-gpu build) the index is copied to all GPUs for
search; it is always saved from its CPU copy.

Modules, by role: :mod:`.config` (:class:`BuildConfig`, :data:`KINDS`), :mod:`.plan` (settings for a memory budget), :mod:`.search` (:class:`KnnIndex`),
:mod:`.recall` (exact top-k, recall, tuning), :mod:`.persist` (files, staleness), :mod:`.builder`
(:class:`BuildConfig` → :func:`build` → :class:`BuildResult`), :mod:`.backend` (faiss plumbing).
"""

import importlib
from typing import Any

from geosolver.errors import IndexBuildError, StaleIndexError

from .config import KINDS, BuildConfig
from .plan import default_nlist, plan_ivfpq

#: numpy- and pandas-free above: the CLI's parsers import this package (``--index`` choices,
#: ``index build``'s options). The rest needs the store (pandas) and is imported on first use:
#: public name → the module of this package that defines it.
_LAZY = {
    "num_gpus": "backend", "set_threads": "backend",
    "BuildResult": "builder", "build": "builder", "build_index": "builder", "index_for_store": "builder", "load_index": "builder", "verify_saved_indexes": "builder",
    "INDEX_FORMAT_VERSION": "persist", "index_paths": "persist", "store_fingerprint": "persist",
    "exact_topk": "recall", "measure_recall": "recall", "recall_at": "recall",
    "KnnIndex": "search",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "INDEX_FORMAT_VERSION",
    "KINDS",
    "BuildConfig",
    "BuildResult",
    "IndexBuildError",
    "KnnIndex",
    "StaleIndexError",
    "build",
    "build_index",
    "default_nlist",
    "exact_topk",
    "index_for_store",
    "index_paths",
    "load_index",
    "verify_saved_indexes",
    "measure_recall",
    "num_gpus",
    "plan_ivfpq",
    "recall_at",
    "set_threads",
    "store_fingerprint",
]
