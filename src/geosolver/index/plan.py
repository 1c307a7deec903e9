"""Index planning: how many cells, how many PQ bytes, and whether the exact re-rank vectors fit
in RAM, for ``n`` vectors of ``dim`` within a memory budget. Pure arithmetic, no faiss."""

from __future__ import annotations

import math
import os

from geosolver.errors import IndexBuildError

MAX_NLIST = 65536
PQ_MAX_M = 64
IVF_ID_BYTES = 8  # faiss stores an int64 id next to each code in the inverted lists
IVF_LIST_SLACK = 1.25  # inverted lists grow by reallocation; calibrated on benchmarks/scale.py (5 M x 768)
PQ_TRAIN_MAX = 256 * 256  # faiss trains PQ codebooks on at most max_points_per_centroid (256) · ksub (256) residuals
FAISS_ADD_BLOCK = 32768  # IndexIVFPQ.add encodes in blocks of this many rows (residuals + codes + coarse ids)
EXACT_WORK_BYTES = 64 * 2**20  # exact_topk's similarity block (queries × batch rows) is kept under this
RERANK_ROWS = 16384  # candidate rows re-scored per block when re-ranking from the store's memmap
RERANK_COPY_RAM_SHARE = 0.25  # without a budget, keep the float16 re-rank copy in RAM up to this share of physical RAM


def default_nlist(n: int) -> int:
    """Inverted-list count for ``n`` rows: about ``4·sqrt(n)``, at most ``n / 39`` (faiss' minimum
    of 39 training points per centroid), at least 1."""
    return int(max(1, min(4 * math.sqrt(max(n, 1)), n // 39)))


def default_train_size(n: int, nlist: int, min_train: int) -> int:
    """Rows sampled for training: ``max(min_train, min(100·nlist, 100 000))``, capped at ``n``."""
    return min(n, int(max(min_train, min(100 * nlist, 100_000))))


def working_set_bytes(n: int, dim: int, n_train: int, batch_size: int) -> int:
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
    return max(train, add, recall_working_set_bytes(n, dim, batch_size))


def recall_working_set_bytes(n: int, dim: int, batch_size: int) -> int:
    """Exact search while measuring recall: one float32 batch + a bounded similarity block."""
    return min(batch_size, n) * dim * 4 + EXACT_WORK_BYTES


def rerank_copy_bytes(n: int, dim: int) -> int:
    """RAM of the float16 copy of every vector that exact re-ranking reads when kept in memory."""
    return 2 * n * dim


def physical_ram_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def rerank_from(n: int, dim: int, memory_budget_gb: float | None, index_bytes: int = 0, batch_size: int = 65536) -> str:
    """Where exact re-ranking reads its vectors: ``"memory"`` (a float16 copy in RAM, scored by faiss:
    ~5× the queries/s of reading the store) or ``"store"`` (gathered from the store's memmap).

    ``memory`` when the copy fits: with a budget, when ``index_bytes`` + the copy + the recall
    measurement's working set fit it; without one, when the copy is at most a quarter of the
    machine's RAM.
    """
    copy = rerank_copy_bytes(n, dim)
    if memory_budget_gb is None:
        ram = physical_ram_bytes()
        return "memory" if ram is None or copy <= RERANK_COPY_RAM_SHARE * ram else "store"
    need = index_bytes + copy + recall_working_set_bytes(n, dim, batch_size)
    return "memory" if need <= memory_budget_gb * 1e9 else "store"


def plan_ivfpq(n: int, dim: int, memory_budget_gb: float, batch_size: int = 65536, train_size: int | None = None, nlist: int | None = None) -> dict:
    """IVF-PQ settings for ``n`` vectors of ``dim`` that fit ``memory_budget_gb`` (10^9 bytes) of RAM.

    Rule:

    * ``nlist`` = ``4·sqrt(n)`` rounded to the nearest power of two, capped at 65 536 and at the
      largest power of two ≤ ``n / 39`` (faiss wants ≥ 39 training points per centroid);
    * ``pq_m`` (bytes per vector at 8 bits) = the largest divisor of ``dim`` that is ≤ 64 and for
      which the estimated peak fits: ``1.25·n·(pq_m + 8)`` (codes + int64 ids in the inverted
      lists, with 25 % reallocation slack) + ``nlist·dim·4`` (coarse centroids) + ``256·dim·4``
      (PQ codebooks) + the largest float32 working set of the build (:func:`working_set_bytes`):
      while training, the float32 sample plus faiss' residual copy of up to 65 536 of its rows;
      while adding, one float32 batch plus faiss' residuals of a 32 768-row block. The build
      releases the store's memory-mapped pages as it goes, so they do not add to the peak;
    * ``rerank_from`` (:func:`rerank_from`): ``memory`` when the inverted lists + a float16 copy
      of every vector + the recall measurement's working set also fit, else ``store``.

    A given ``nlist`` is kept (only ``pq_m`` is chosen).

    Returns:
        ``{"nlist", "pq_m", "bytes", "rerank_from"}`` (``bytes``: the estimate for the chosen
        settings, the float16 copy included when it is kept in memory).

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
    fixed = nlist * dim * 4 + 256 * dim * 4
    budget = memory_budget_gb * 1e9
    for m in sorted((m for m in range(1, min(dim, PQ_MAX_M) + 1) if dim % m == 0), reverse=True):
        lists = int(IVF_LIST_SLACK * n * (m + IVF_ID_BYTES)) + fixed
        total = lists + working_set_bytes(n, dim, n_train, batch_size)
        if total <= budget:
            where = rerank_from(n, dim, memory_budget_gb, lists, batch_size)
            with_copy = lists + rerank_copy_bytes(n, dim) + recall_working_set_bytes(n, dim, batch_size)
            return {"nlist": nlist, "pq_m": int(m), "bytes": int(max(total, with_copy) if where == "memory" else total), "rerank_from": where}
    need = int(IVF_LIST_SLACK * n * (1 + IVF_ID_BYTES)) + fixed + working_set_bytes(n, dim, n_train, batch_size)
    raise IndexBuildError(f"memory budget {memory_budget_gb} GB is too small for {n:,} x {dim} vectors: IVF-PQ needs at least {need / 1e9:.2f} GB")
