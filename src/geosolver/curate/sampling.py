"""Round-robin selection over groups, with spherical k-means ordering inside large groups.

See :mod:`geosolver.curate` for the algorithm.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from geosolver.curate.groups import DEFAULT_FEATURES, CurationError, group_codes, present_features
from geosolver.curate.names import STRATEGIES  # re-exported
from geosolver.geo import grid_cell
from geosolver.progress import tqdm

COVERAGE_CELL_DEG = 2.0


# ------------------------------------------------------------------------------------------
# round-robin arithmetic
# ------------------------------------------------------------------------------------------
def rounds_needed(sizes: np.ndarray, n: int) -> int:
    """Smallest ``R`` with ``sum_g min(size_g, R) >= n`` (0 when ``n == 0``).

    Args:
        sizes: images per group, shape ``(G,)``.
        n: images wanted, at most ``sizes.sum()``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if n <= 0:
        return 0
    if n > sizes.sum():
        raise CurationError(f"want {n} images but groups hold only {int(sizes.sum())}")
    lo, hi = 1, int(sizes.max())
    while lo < hi:
        mid = (lo + hi) // 2
        if np.minimum(sizes, mid).sum() >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo


def contributions(sizes: np.ndarray, group_pos: np.ndarray, n: int) -> np.ndarray:
    """Images each group gives when ``n`` are taken round-robin in group order ``group_pos``.

    Args:
        sizes: images per group, ``(G,)``.
        group_pos: position of each group in the round order, a permutation of ``range(G)``.
        n: images wanted (at most ``sizes.sum()``).

    Returns:
        int64 ``(G,)``: ``min(size, R-1)`` plus one for the first groups (in order) that still
        have an image in the last round ``R-1``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    r = rounds_needed(sizes, n)
    if r == 0:
        return np.zeros_like(sizes)
    c = np.minimum(sizes, r - 1)
    left = n - int(c.sum())
    in_last = np.nonzero(sizes >= r)[0]
    in_last = in_last[np.argsort(group_pos[in_last], kind="stable")][:left]
    c[in_last] += 1
    return c


def ranks_from_keys(codes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank of each row inside its group when the group is ordered by ``keys`` ascending.

    Args:
        codes: group id per row, ``(n,)``.
        keys: sort key per row, ``(n,)`` (ties broken by row index).

    Returns:
        int64 ``(n,)`` ranks starting at 0 in every group.
    """
    n = len(codes)
    order = np.lexsort((keys, codes))
    sorted_codes = codes[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_codes))[0] + 1] if n else np.zeros(0, np.int64)
    run_start = np.zeros(n, dtype=np.int64)
    if n:
        run_start[starts] = starts
        run_start = np.maximum.accumulate(run_start)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64) - run_start
    return rank


def round_robin(codes: np.ndarray, rank: np.ndarray, group_pos: np.ndarray, n: int) -> np.ndarray:
    """First ``n`` rows by ``(rank, group position)``: one per group per round, groups in order.

    Args:
        codes: group id per row ``(rows,)``.
        rank: rank of each row inside its group ``(rows,)`` (0 = taken in the first round).
        group_pos: position of each group in the round order ``(G,)``.
        n: rows wanted.

    Returns:
        int64 row indices in selection order, length ``min(n, rows)``.
    """
    sizes = np.bincount(codes, minlength=len(group_pos))
    n = min(int(n), len(codes))
    r = rounds_needed(sizes, n)
    cand = np.nonzero(rank < r)[0]
    order = np.lexsort((group_pos[codes[cand]], rank[cand]))
    return cand[order[:n]].astype(np.int64)


# ------------------------------------------------------------------------------------------
# clustering inside a group
# ------------------------------------------------------------------------------------------
def n_clusters(size: int, picks: int, max_clusters: int = 64) -> int:
    """Clusters for a group of ``size`` images giving ``picks``: ``min(ceil(sqrt(size)), picks, max_clusters)``."""
    return int(max(1, min(math.ceil(math.sqrt(size)), picks, max_clusters)))


def farthest_first(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Visiting order of clusters: the largest first, then always the one whose centre is least
    similar (cosine) to the closest centre already visited (farthest-point traversal).

    Args:
        centres: ``(k, d)`` unit-norm cluster centres.
        sizes: ``(k,)`` images per cluster (empty clusters go last).

    Returns:
        int64 ``(k,)`` cluster ids in visiting order.
    """
    k = len(centres)
    sizes = np.asarray(sizes)
    order = [int(np.lexsort((np.arange(k), -sizes))[0])]
    nearest = centres @ centres[order[0]]  # similarity to the closest visited centre
    left = np.ones(k, dtype=bool)
    left[order[0]] = False
    for _ in range(k - 1):
        # non-empty clusters first, then lowest similarity, ties by id
        cand = np.nonzero(left)[0]
        j = cand[np.lexsort((cand, nearest[cand], sizes[cand] == 0))[0]]
        order.append(int(j))
        left[j] = False
        nearest = np.maximum(nearest, centres @ centres[j])
    return np.asarray(order, dtype=np.int64)


def cluster_order(emb: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Order a group's images round-robin over ``k`` spherical k-means clusters.

    Args:
        emb: ``(m, d)`` float32 L2-normalised embeddings of the group.
        k: number of clusters (``1 <= k <= m``).
        seed: k-means seed.
        niter: k-means iterations.

    Returns:
        ``(rank, labels)``: ``rank`` int64 ``(m,)`` position of each image in the group's
        order (one image from each cluster per turn, clusters in :func:`farthest_first`
        order, inside a cluster nearest to the centre first); ``labels`` int64 ``(m,)`` cluster of each image.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    m, d = emb.shape
    k = int(min(max(k, 1), m))
    if k == 1:
        c = emb.mean(axis=0)
        c /= max(float(np.linalg.norm(c)), 1e-12)
        sim = emb @ c
        labels = np.zeros(m, dtype=np.int64)
    else:
        import faiss  # faiss: optional heavy backend

        km = faiss.Kmeans(d, k, niter=niter, spherical=True, seed=int(seed) % (2**31), min_points_per_centroid=1, verbose=False)
        km.train(emb)
        _, lab = km.index.search(emb, 1)
        labels = lab[:, 0].astype(np.int64)
        cent = km.centroids / np.maximum(np.linalg.norm(km.centroids, axis=1, keepdims=True), 1e-12)
        sim = np.einsum("ij,ij->i", emb, cent[labels])
    # rank inside its cluster by similarity to the centre (descending)
    in_cluster = ranks_from_keys(labels, -sim)
    cpos = np.empty(k, dtype=np.int64)
    cpos[farthest_first(cent if k > 1 else c[None], np.bincount(labels, minlength=k))] = np.arange(k)
    order = np.lexsort((cpos[labels], in_cluster))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m)
    return rank, labels


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
@dataclass
class CurationResult:
    """What :func:`select` chose.

    Attributes:
        rows: int64 row indices into the store, in selection order (round by round).
        strategy: the strategy used.
        by: the feature columns actually used for grouping (empty for ``random``; ``["cell"]``
            grid cells for ``cell``).
        group_keys: one row per group (feature values), index = group id.
        group_sizes: int64 ``(G,)`` images per group in the whole store.
        per_group_counts: int64 ``(G,)`` images taken from each group.
        rounds: rounds of the round-robin used (0 for ``random``).
        n_clustered_groups: groups whose order came from k-means.
        settings: the effective settings.
        timings: seconds spent per phase.
    """

    rows: np.ndarray
    strategy: str
    by: list[str]
    group_keys: pd.DataFrame
    group_sizes: np.ndarray
    per_group_counts: np.ndarray
    rounds: int = 0
    n_clustered_groups: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def per_group_table(self, taken_only: bool = False) -> pd.DataFrame:
        """Group keys with ``n_images`` (in the store) and ``n_taken``, largest group first."""
        idx = np.nonzero(self.per_group_counts > 0)[0] if taken_only else np.arange(len(self.group_sizes))
        idx = idx[np.lexsort((-self.per_group_counts[idx], -self.group_sizes[idx]))]
        t = self.group_keys.iloc[idx].astype(str).reset_index(drop=True)
        t["n_images"] = self.group_sizes[idx]
        t["n_taken"] = self.per_group_counts[idx]
        return t


def _order_clustered_groups(
    store, codes: np.ndarray, sizes: np.ndarray, contrib: np.ndarray, rank: np.ndarray,
    seed: int, cluster_threshold: int, max_clusters: int, pool_min: int, pool_per_pick: int, pool_max: int,
) -> int:
    """Overwrite ``rank`` for groups that need clustering; return how many were clustered."""
    need = np.nonzero((contrib < sizes) & (sizes > cluster_threshold) & (contrib > 0))[0]
    if need.size == 0:
        return 0
    # rows of every group, grouped contiguously (one argsort, no loop over rows)
    order = np.argsort(codes, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)]

    for g in tqdm(need, desc="clustering groups", unit="group", disable=need.size < 50, mininterval=2.0):
        rows_g = order[starts[g] : starts[g + 1]]
        c = int(contrib[g])
        pool = int(min(rows_g.size, min(pool_max, max(pool_min, pool_per_pick * c))))
        if pool < rows_g.size:
            # the random order already in ``rank`` decides the candidate pool
            cand = rows_g[np.argsort(rank[rows_g], kind="stable")[:pool]]
        else:
            cand = rows_g
        cand = np.sort(cand)  # sequential memmap reads
        emb = store.embeddings(cand)
        k = n_clusters(int(sizes[g]), c, max_clusters)
        r, _ = cluster_order(emb, k, seed=seed + int(g))
        # pool rows come first (by cluster order), the rest keep their random order after them
        rest = np.setdiff1d(rows_g, cand, assume_unique=True)
        rank[cand] = r
        if rest.size:
            rank[rest] = pool + ranks_from_keys(np.zeros(rest.size, np.int64), rank[rest])
    return int(need.size)


def select(
    store,
    size: int,
    by: Sequence[str] | None = None,
    strategy: str = "grouped-clustered",
    seed: int = 0,
    cluster_threshold: int = 20,
    cell_size: float = COVERAGE_CELL_DEG,
    max_clusters: int = 64,
    pool_min: int = 256,
    pool_per_pick: int = 64,
    pool_max: int = 50_000,
    meta: pd.DataFrame | None = None,
) -> CurationResult:
    """Choose ``size`` rows of ``store`` (see the module docstring for the algorithm).

    Args:
        store: an :class:`~geosolver.store.EmbeddingStore` (embeddings are read only for
            the groups that are clustered, one group at a time).
        size: images wanted; more than the store holds means all of them.
        by: feature columns to group by (``grouped*`` strategies); absent ones are skipped. None:
            :data:`~geosolver.curate.groups.DEFAULT_FEATURES` (absent ones noticed once per process).
        strategy: ``grouped-clustered`` (default), ``grouped``, ``cell`` or ``random``.
        seed: seed of every random choice (group order, order inside groups, k-means).
        cluster_threshold: groups with at most this many images are never clustered.
        cell_size: grid cell size in degrees for the ``cell`` strategy.
        max_clusters: cap on k per group.
        pool_min, pool_per_pick, pool_max: candidate pool of a clustered group:
            ``min(size_g, pool_max, max(pool_min, pool_per_pick * picks_g))`` random rows.
        meta: the store's metadata, if already loaded.

    Returns:
        :class:`CurationResult` with rows in selection order.

    Raises:
        CurationError: unknown strategy, non-positive size, or no usable feature column.
    """
    if strategy not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if size <= 0:
        raise CurationError(f"size must be positive, got {size}")
    if cluster_threshold < 0:
        raise CurationError(f"cluster threshold must be >= 0, got {cluster_threshold}")
    meta = store.metadata if meta is None else meta
    n_rows = len(meta)
    n = int(min(size, n_rows))
    rng = np.random.default_rng(seed)
    settings = dict(size=int(size), strategy=strategy, seed=int(seed), by=list(DEFAULT_FEATURES if by is None else by), cluster_threshold=int(cluster_threshold),
                    cell_size=float(cell_size), max_clusters=int(max_clusters), pool_min=int(pool_min),
                    pool_per_pick=int(pool_per_pick), pool_max=int(pool_max))
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    if strategy == "random":
        rows = rng.permutation(n_rows)[:n].astype(np.int64)
        timings["select"] = time.perf_counter() - t0
        return CurationResult(rows=rows, strategy=strategy, by=[], group_keys=pd.DataFrame(index=[0]),
                              group_sizes=np.array([n_rows]), per_group_counts=np.array([n]), settings=settings, timings=timings)

    if strategy == "cell":
        lat, lon = meta["lat"].to_numpy(np.float64), meta["lon"].to_numpy(np.float64)
        cell_ids = grid_cell(lat, lon, cell_size)
        codes, uniq = pd.factorize(cell_ids, sort=False)
        codes = codes.astype(np.int64)
        used = ["grid_cell"]
        n_cols = int(np.ceil(360.0 / cell_size))
        keys = pd.DataFrame({"grid_cell": [
            f"{(u // n_cols) * cell_size - 90:g},{(u % n_cols) * cell_size - 180:g}" for u in uniq
        ]})
    else:
        used = present_features(meta, by)
        codes, keys = group_codes(meta, used)
    timings["group"] = time.perf_counter() - t0

    g = len(keys)
    t1 = time.perf_counter()
    sizes = np.bincount(codes, minlength=g).astype(np.int64)
    group_pos = rng.permutation(g).astype(np.int64)
    rank = ranks_from_keys(codes, rng.random(n_rows))  # random order inside every group
    contrib = contributions(sizes, group_pos, n)
    timings["rank"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    n_clustered = 0
    if strategy == "grouped-clustered":
        n_clustered = _order_clustered_groups(store, codes, sizes, contrib, rank, seed, cluster_threshold,
                                              max_clusters, pool_min, pool_per_pick, pool_max)
    timings["cluster"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    rows = round_robin(codes, rank, group_pos, n)
    timings["round_robin"] = time.perf_counter() - t2
    counts = np.bincount(codes[rows], minlength=g).astype(np.int64)
    return CurationResult(rows=rows, strategy=strategy, by=used, group_keys=keys, group_sizes=sizes,
                          per_group_counts=counts, rounds=rounds_needed(sizes, n), n_clustered_groups=n_clustered,
                          settings=settings, timings=timings)
