"""Exact, blocked statistics of cosine similarity against great-circle distance over image pairs.

Nothing here materialises an ``N × N`` matrix: pairs are processed in blocks (a block of rows
against all later rows, taken :data:`CHUNK_PAIRS` pairs — a slice of columns — at a time;
similarity by a float32 matmul, distance by vectorised haversine) and every chunk is reduced
into fixed-size accumulators. Each thread reuses one set of work arrays (``_Scratch``) for all
its chunks, so nothing is allocated per chunk and the arrays stay in cache; the bin index is
computed once per chunk and shared by every encoder; the 2-D histogram and both fine
near/far histograms are filled by one ``np.add.at`` each (near/far/neither as an offset):

Distances (:func:`arc_km`) are the haversine formula written on 3-D unit vectors:
``sin²(θ/2) = (1 − p·q)/2`` with ``p·q`` from a float64 matmul (exact to ~1e-16, so no
cancellation at short range), the rest in float32 — 2.5× faster than element-wise
:func:`geosolver.geo.haversine`. Agreement with it: < 1 m below 100 km, < 3 km near the
antipode (tests check this).

* per **distance sub-bin** (each display bin split at its midpoint): pair count and sums of
  ``s``, ``s²``, ``u``, ``u²``, ``s·u`` where ``u = d − left edge of the sub-bin`` (km). These
  give the binned mean ± std curve, Pearson's r, and the *exact* mean squared deviation of
  the pairs from any curve that is piecewise linear with knots at display-bin midpoints
  (see :meth:`PairStats.mse`), which is how the isotonic "ideal curve" is evaluated;
* a 2-D histogram of (display distance bin, similarity bin) counts for the density plot;
* fine similarity histograms (``2**15`` bins on [-1, 1], width ≈ 6.1e-5) of near pairs
  (d < 25 km) and far pairs (d > 5000 km) for the "false friends" share.

Distance bins (``default_distance_edges``): 0, 1, 5, 10, 25, 50, 100 km, then every 100 km up
to 20 100 km (the largest possible distance is π·6371 ≈ 20 015 km) — fine near 0 where
retrieval lives, linear elsewhere.

Several encoders are analysed on the same pairs in one pass: distances and bin indices are
computed once per block and shared.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits
from geosolver.progress import tqdm

from geosolver.errors import AnalysisError
from geosolver.geo import EARTH_RADIUS_KM, latlon_to_xyz, validate_coords

NEAR_KM = 25.0
FAR_KM = 5000.0
FALSE_FRIEND_QUANTILE = 0.95
DEFAULT_SIM_BINS = 800
FINE_SIM_BINS = 1 << 15
MAX_KM = float(np.pi * EARTH_RADIUS_KM)
#: The all-pairs pass accumulates even and odd blocks separately (two threads when there are two
#: cores: numpy releases the GIL in its loops) and adds the two parts at the end — always two, so
#: the float sums are the same on every machine.
PASS_PARTS = 2
#: Pairs per chunk of the all-pairs pass (rows of a block × a slice of the later columns): its
#: float64 work arrays (1 MiB each) stay in a core's L2 cache.
CHUNK_PAIRS = 1 << 17


def default_distance_edges() -> np.ndarray:
    """Display distance-bin edges in km, float64, shape ``(B + 1,)``.

    ``[0, 1, 5, 10, 25, 50, 100, 200, ..., 20100]``: fine bins below 100 km, 100-km bins above.
    """
    return np.concatenate([[0.0, 1.0, 5.0, 10.0, 25.0, 50.0], np.arange(100.0, 20100.0 + 1, 100.0)])


def _sub_edges(edges: np.ndarray) -> np.ndarray:
    """Each display bin split at its midpoint: shape ``(2B + 1,)``."""
    mid = 0.5 * (edges[:-1] + edges[1:])
    out = np.empty(2 * len(mid) + 1)
    out[0::2] = edges
    out[1::2] = mid
    return out


class _Scratch:
    """Reusable work arrays by name: the all-pairs pass gives each thread one, so its chunks of
    pairs allocate nothing and stay in cache. ``get`` returns the first ``n`` elements."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        b = self._bufs.get(name)
        if b is None or b.size < n or b.dtype != dtype:
            b = self._bufs[name] = np.empty(max(n, 1), dtype)
        return b[:n]


class DistanceBlock:
    """Distances of one block of pairs with their bin indices, shared by every encoder.

    Args:
        d: distances in km, any shape (flattened), finite and non-negative.
        sub_edges: sub-bin edges in km (``_sub_edges(display edges)``), float64.
        scratch: work arrays to reuse; this block's arrays live in them until the next block.
    """

    def __init__(self, d: np.ndarray, sub_edges: np.ndarray, scratch: _Scratch | None = None):
        ws = _Scratch() if scratch is None else scratch
        self.d = d = np.ascontiguousarray(d, dtype=np.float32).ravel()
        n = d.size
        e32 = sub_edges.astype(np.float32)
        k0, w = _uniform_tail(sub_edges)
        # arithmetic bin index on the uniform tail of the edges, searchsorted below it
        t = ws.get("d_tmp", n, np.float32)
        np.subtract(d, e32[k0], out=t)
        t *= np.float32(1.0 / w)
        np.minimum(t, len(sub_edges) - 2 - k0, out=t)  # beyond the last edge: the last bin (same as clipping the index)
        sub = ws.get("d_sub", n, np.intp)
        np.copyto(sub, t, casting="unsafe")  # truncates toward zero, as astype does
        sub += k0
        mask = np.less(d, e32[k0], out=ws.get("d_mask", n, np.bool_))
        if mask.any():  # below the tail (and negative t): searchsorted, in [0, k0)
            sub[mask] = np.searchsorted(e32[: k0 + 1], d[mask], side="right") - 1
        self.sub = sub
        self.disp = ws.get("d_disp", n, np.intp)  # display bin: sub >> 1 (filled below; work space until then)
        np.take(e32, sub, out=t, mode="clip")  # sub is in range: "clip" only skips the bounds check
        np.subtract(d, t, out=t)
        self.u = ws.get("d_u", n, np.float64)
        self.u[...] = t
        # offset into the fine near/far histograms: far pairs 0, near FINE_SIM_BINS, the rest 2·FINE_SIM_BINS
        # (= 2F·[d ≤ FAR] − F·[d < NEAR], as NEAR < FAR)
        self.fine_off = off = ws.get("d_off", n, np.intp)
        np.multiply(np.less_equal(d, FAR_KM, out=mask), 2 * FINE_SIM_BINS, out=off)
        off -= np.multiply(np.less(d, NEAR_KM, out=mask), FINE_SIM_BINS, out=self.disp)
        np.right_shift(sub, 1, out=self.disp)
        k = len(sub_edges) - 1
        self.sub_counts = np.bincount(sub, minlength=k)
        self.sub_u = np.bincount(sub, weights=self.u, minlength=k)
        u2 = np.multiply(self.u, self.u, out=ws.get("d_u2", n, np.float64))
        self.sub_u2 = np.bincount(sub, weights=u2, minlength=k)


@dataclass
class PairStats:
    """Accumulated statistics of ``(similarity, distance)`` pairs for one encoder.

    Attributes:
        dist_edges: display distance-bin edges, km, shape ``(B + 1,)``.
        sim_bins: number of similarity bins on [-1, 1] of the 2-D histogram.
        n, s, s2, u, u2, su: per sub-bin (``2B``) count and sums (float64; ``u`` in km).
        hist2d: ``(B, sim_bins)`` int64 counts of (distance bin, similarity bin).
        near_hist, far_hist: fine similarity histograms (``FINE_SIM_BINS`` on [-1, 1]) of pairs
            closer than :data:`NEAR_KM` and farther than :data:`FAR_KM`.
    """

    dist_edges: np.ndarray = field(default_factory=default_distance_edges)
    sim_bins: int = DEFAULT_SIM_BINS

    def __post_init__(self) -> None:
        self.dist_edges = np.asarray(self.dist_edges, dtype=np.float64)
        self.sub_edges = _sub_edges(self.dist_edges)
        k = len(self.sub_edges) - 1
        self.n = np.zeros(k, np.int64)
        self.s = np.zeros(k)
        self.s2 = np.zeros(k)
        self.u = np.zeros(k)
        self.u2 = np.zeros(k)
        self.su = np.zeros(k)
        self.hist2d = np.zeros((len(self.dist_edges) - 1, self.sim_bins), np.int64)
        # far | near | neither (ignored), so that one np.add.at fills both fine histograms
        self._fine = np.zeros(3 * FINE_SIM_BINS, np.int64)
        self.far_hist = self._fine[:FINE_SIM_BINS]
        self.near_hist = self._fine[FINE_SIM_BINS : 2 * FINE_SIM_BINS]
        self.exp_sum = 0.0  # Σ exp(−2‖x−y‖²) = Σ exp(4s − 4) for unit vectors (uniformity)
        self.kept: np.ndarray | None = None  # similarities of all_pairs_stats(keep_pairs=...), in that order

    # -- accumulation -----------------------------------------------------------------
    def add(self, sim: np.ndarray, blk: DistanceBlock, scratch: _Scratch | None = None) -> None:
        """Add a block of similarities (same pairs, same order as ``blk``)."""
        s = np.ascontiguousarray(sim, dtype=np.float32).ravel()
        if s.shape != blk.d.shape:
            raise ValueError(f"similarity block has {s.size} values, distance block {blk.d.size}")
        ws = _Scratch() if scratch is None else scratch
        n = s.size
        k = len(self.n)
        self.n += blk.sub_counts
        self.u += blk.sub_u
        self.u2 += blk.sub_u2
        s64 = ws.get("s64", n, np.float64)  # products in float64: s² in float32 would cost ~1e-7 in the variance
        s64[...] = s
        self.s += np.bincount(blk.sub, weights=s64, minlength=k)
        t64 = np.multiply(s64, s64, out=ws.get("t64", n, np.float64))
        self.s2 += np.bincount(blk.sub, weights=t64, minlength=k)
        np.multiply(s64, blk.u, out=t64)
        self.su += np.bincount(blk.sub, weights=t64, minlength=k)
        t = np.subtract(s, np.float32(1.0), out=ws.get("t32", n, np.float32))
        t *= np.float32(4.0)
        self.exp_sum += float(np.exp(t, out=t).sum(dtype=np.float64))
        s1 = np.add(s, np.float32(1.0), out=ws.get("s1", n, np.float32))  # s + 1, for both similarity indices
        key = _sim_index(s1, self.sim_bins, t, ws.get("key", n, np.intp))
        key += np.multiply(blk.disp, self.sim_bins, out=ws.get("key2", n, np.intp))
        np.add.at(self.hist2d.reshape(-1), key, 1)
        key = _sim_index(s1, FINE_SIM_BINS, t, key)
        key += blk.fine_off
        np.add.at(self._fine, key, 1)

    def merge(self, other: "PairStats") -> None:
        """Add another accumulator's pairs (same bins) into this one."""
        for name in ("n", "s", "s2", "u", "u2", "su", "hist2d", "near_hist", "far_hist"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.exp_sum += other.exp_sum

    # -- derived quantities -----------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        return int(self.n.sum())

    @property
    def sim_edges(self) -> np.ndarray:
        """Similarity-bin edges of :attr:`hist2d`, shape ``(sim_bins + 1,)``."""
        return np.linspace(-1.0, 1.0, self.sim_bins + 1)

    @property
    def bin_centers_km(self) -> np.ndarray:
        """Midpoints of the display distance bins (km), shape ``(B,)``; the curve knots."""
        return 0.5 * (self.dist_edges[:-1] + self.dist_edges[1:])

    def binned(self) -> dict[str, np.ndarray]:
        """Per display bin: ``count``, ``mean`` and ``std`` (population) of similarity, ``mean_km``.

        Empty bins have count 0 and NaN mean/std/mean_km.
        """
        n = self.n[0::2] + self.n[1::2]
        s = self.s[0::2] + self.s[1::2]
        s2 = self.s2[0::2] + self.s2[1::2]
        e0 = self.sub_edges[:-1]
        dsum = self.n * e0 + self.u
        dsum = dsum[0::2] + dsum[1::2]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s / n
            var = np.maximum(s2 / n - mean**2, 0.0)
            mean_km = dsum / n
        return {"count": n, "mean": mean, "std": np.sqrt(var), "mean_km": mean_km}

    def moments(self) -> dict[str, float]:
        """Global sums over all pairs: ``n``, ``s``, ``s2``, ``d``, ``d2``, ``sd`` (km)."""
        e0 = self.sub_edges[:-1]
        return {
            "n": float(self.n.sum()),
            "s": float(self.s.sum()),
            "s2": float(self.s2.sum()),
            "d": float((self.n * e0 + self.u).sum()),
            "d2": float((self.n * e0**2 + 2 * e0 * self.u + self.u2).sum()),
            "sd": float((e0 * self.s + self.su).sum()),
        }

    def mean_sim(self) -> float:
        m = self.moments()
        return m["s"] / m["n"] if m["n"] else float("nan")

    def pearson(self) -> float:
        """Pearson correlation between similarity and distance over all accumulated pairs."""
        m = self.moments()
        n = m["n"]
        if n < 2:
            return float("nan")
        cov = m["sd"] / n - (m["s"] / n) * (m["d"] / n)
        vs = m["s2"] / n - (m["s"] / n) ** 2
        vd = m["d2"] / n - (m["d"] / n) ** 2
        if vs <= 0 or vd <= 0:
            return float("nan")
        return float(cov / np.sqrt(vs * vd))

    def mse(self, curve) -> float:
        """Exact mean of ``(s − curve(d))²`` over all pairs.

        Exact for any ``curve`` that is linear inside every sub-bin — true for a
        :class:`~geosolver.analysis.curve.MonotoneCurve` whose knots are display-bin midpoints
        (the ones :func:`fit_monotone_curve` makes from :meth:`binned`), and for constants.
        On a sub-bin ``[e0, e1)`` the curve is ``a + b·u`` with ``u = d − e0``, so
        ``Σ(s − a − b·u)² = S2 − 2aS − 2bSU + n·a² + 2ab·U + b²·U2``.
        """
        e0, e1 = self.sub_edges[:-1], self.sub_edges[1:]
        m0 = np.asarray(curve(e0), dtype=np.float64) * np.ones_like(e0)
        m1 = np.asarray(curve(e1), dtype=np.float64) * np.ones_like(e1)
        b = (m1 - m0) / (e1 - e0)
        a = m0
        tot = self.s2 - 2 * a * self.s - 2 * b * self.su + self.n * a * a + 2 * a * b * self.u + b * b * self.u2
        n = self.n.sum()
        return float(max(tot.sum(), 0.0) / n) if n else float("nan")

    def mse_binned_mean(self) -> float:
        """Mean squared deviation of pairs from their display bin's mean (the unconstrained step curve)."""
        b = self.binned()
        ok = b["count"] > 0
        return float((b["count"][ok] * b["std"][ok] ** 2).sum() / b["count"].sum())

    def false_friends(self) -> dict[str, float]:
        """Share of far pairs (> 5000 km) more similar than the 95th percentile of near pairs (< 25 km).

        The percentile is resolved on the fine histogram (bin width ``2/2**15`` ≈ 6.1e-5 in
        cosine): the threshold is the upper edge of the bin holding the percentile, and far
        pairs in bins above it count. NaN when there are no near or no far pairs.
        """
        n_near, n_far = int(self.near_hist.sum()), int(self.far_hist.sum())
        out = {"n_near_pairs": n_near, "n_far_pairs": n_far, "near_p95_sim": float("nan"), "false_friend_share": float("nan"), "n_false_friends": 0}
        if n_near == 0 or n_far == 0:
            return out
        cum = np.cumsum(self.near_hist)
        q = int(np.searchsorted(cum, FALSE_FRIEND_QUANTILE * n_near, side="left"))
        q = min(q, FINE_SIM_BINS - 1)
        thr = -1.0 + 2.0 * (q + 1) / FINE_SIM_BINS
        above = int(self.far_hist[q + 1 :].sum())
        out.update(near_p95_sim=thr, n_false_friends=above, false_friend_share=above / n_far)
        return out

    def uniformity(self) -> float:
        """Wang & Isola uniformity ``log mean exp(−2‖x−y‖²)`` over the accumulated pairs (unit vectors)."""
        n = self.n_pairs
        return float(np.log(self.exp_sum / n)) if n else float("nan")

    def sim_histogram(self) -> np.ndarray:
        """Counts of all pairs per similarity bin (marginal of :attr:`hist2d`), shape ``(sim_bins,)``."""
        return self.hist2d.sum(axis=0)


def arc_km(cos_angle: np.ndarray, out: np.ndarray | None = None, overwrite: bool = False) -> np.ndarray:
    """Great-circle distance in km (float32) from the float64 dot products of unit vectors.

    ``d = 2R·asin(√h)`` with ``h = sin²(θ/2) = (1 − cos θ)/2`` computed in float64 (the
    haversine formula), the square root and arcsine in float32. ``out``: a float32 array of the
    same shape to write into; ``overwrite``: ``cos_angle`` (float64) may be used as work space.
    """
    c = np.asarray(cos_angle, dtype=np.float64)
    h = np.multiply(c, 0.5, out=c if overwrite else None)
    np.subtract(0.5, h, out=h)
    out = np.empty(h.shape, np.float32) if out is None else out
    np.clip(h, 0.0, 1.0, out=out, casting="same_kind")  # clipping before or after the cast: same values
    np.sqrt(out, out=out)
    np.arcsin(out, out=out)
    out *= np.float32(2.0 * EARTH_RADIUS_KM)
    return out


def _uniform_tail(edges: np.ndarray) -> tuple[int, float]:
    """``(k, w)``: ``edges[k:]`` is the longest equally spaced (width ``w``) tail of ``edges``."""
    diff = np.diff(edges)
    w = diff[-1]
    k = len(diff) - 1
    while k > 0 and abs(diff[k - 1] - w) <= 1e-9 * w:
        k -= 1
    return k, float(w)


def _sim_index(s_plus_1: np.ndarray, bins: int, tmp: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bin index (into ``out``) of cosine values ``s`` on ``bins`` equal bins over [-1, 1] (values
    outside are clipped), given ``s + 1`` in float32; ``tmp`` is float32 work space of the same size."""
    np.multiply(s_plus_1, np.float32(bins / 2.0), out=tmp)
    np.clip(tmp, 0, bins - 1, out=tmp)  # in float32 before truncation: the same index as clipping after, cheaper
    np.copyto(out, tmp, casting="unsafe")  # truncates, as astype does
    return out


def _check(embs: Sequence[np.ndarray], lat, lon) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    lat_a, lon_a = validate_coords(lat, lon, "analysis coordinates")
    out = []
    for e in embs:
        e = np.ascontiguousarray(e, dtype=np.float32)
        if e.ndim != 2 or e.shape[0] != lat_a.shape[0]:
            raise AnalysisError(f"embeddings shape {e.shape} does not match {lat_a.shape[0]} coordinates")
        out.append(e)
    return out, lat_a, lon_a


def all_pairs_stats(
    embs: Sequence[np.ndarray],
    lat: np.ndarray,
    lon: np.ndarray,
    block: int = 256,
    dist_edges: np.ndarray | None = None,
    sim_bins: int = DEFAULT_SIM_BINS,
    progress: bool = True,
    keep_pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[PairStats]:
    """Statistics over all ``n(n−1)/2`` unordered pairs ``i < j``, for several encoders at once.

    Args:
        embs: one ``(n, d_k)`` float array per encoder, rows L2-normalised, same row order.
        lat, lon: ``(n,)`` degrees.
        block: rows per block; memory is about ``2 × block × n × 100`` bytes (two blocks at a time).
        dist_edges: display distance-bin edges in km (default :func:`default_distance_edges`).
        sim_bins: similarity bins of the 2-D histogram.
        progress: show a tqdm bar.
        keep_pairs: ``(i, j)`` with ``i < j``: pairs whose similarity is also kept
            (:attr:`PairStats.kept`, in the given order) — read from the blocks the pass computes
            anyway, instead of gathering both rows of every pair again (Spearman's sample).

    Returns:
        one :class:`PairStats` per encoder.
    """
    embs, lat_a, lon_a = _check(embs, lat, lon)
    edges = default_distance_edges() if dist_edges is None else np.asarray(dist_edges, np.float64)
    parts = [[PairStats(edges, sim_bins) for _ in embs] for _ in range(PASS_PARTS)]
    sub_edges = _sub_edges(edges)
    n = lat_a.shape[0]
    xyz = latlon_to_xyz(lat_a, lon_a)  # (n, 3) float64
    keep = _KeptPairs(keep_pairs, n, len(embs)) if keep_pairs is not None else None
    starts = list(range(0, max(n - 1, 0), block))

    cols = max(CHUNK_PAIRS // block, 16)  # columns per chunk: a chunk's work arrays stay in cache

    def run_part(p: int) -> None:
        ws = _Scratch()
        for a in starts[p::PASS_PARTS]:
            b = min(n, a + block)
            tri = np.triu_indices(b - a, k=1)  # pairs inside the block's own rows
            blk = DistanceBlock(arc_km(xyz[a:b] @ xyz[a:b].T, overwrite=True)[tri], sub_edges, ws)
            for k, (e, st) in enumerate(zip(embs, parts[p])):
                inner = e[a:b] @ e[a:b].T
                st.add(inner[tri], blk, ws)
                if keep is not None:
                    keep.take(k, a, b, a, inner)
            for c in range(b, n, cols):  # rows a:b × later rows, a chunk of columns at a time
                c1 = min(n, c + cols)
                m = (b - a) * (c1 - c)
                cos = np.matmul(xyz[a:b], xyz[c:c1].T, out=ws.get("cos", m, np.float64).reshape(b - a, c1 - c))
                blk = DistanceBlock(arc_km(cos, ws.get("d", m, np.float32).reshape(cos.shape), overwrite=True), sub_edges, ws)
                for k, (e, st) in enumerate(zip(embs, parts[p])):
                    sim = np.matmul(e[a:b], e[c:c1].T, out=ws.get("sim", m, np.float32).reshape(b - a, c1 - c))
                    st.add(sim, blk, ws)
                    if keep is not None:
                        keep.take(k, a, b, c, sim)
            bar.update(1)

    threads = min(PASS_PARTS, os.cpu_count() or 1)
    with tqdm(total=len(starts), desc="pairs", unit="block", disable=not progress) as bar, \
            threadpool_limits(1 if threads > 1 else None, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        list(pool.map(run_part, range(PASS_PARTS)))
    stats = parts[0]
    for other in parts[1:]:
        for st, o in zip(stats, other):
            st.merge(o)
    if keep is not None:
        for k, st in enumerate(stats):
            st.kept = keep.result(k)
    return stats


class _KeptPairs:
    """Similarities of chosen pairs ``(i, j)``, ``i < j``, picked out of the all-pairs blocks."""

    def __init__(self, pairs: tuple[np.ndarray, np.ndarray], n: int, n_enc: int):
        i, j = (np.asarray(x, np.int64) for x in pairs)
        if i.shape != j.shape or (i.size and (i.min() < 0 or j.max() >= n or (i >= j).any())):
            raise ValueError(f"kept pairs must be (i, j) with 0 <= i < j < {n}")
        self.order = np.argsort(i, kind="stable")
        self.i, self.j = i[self.order], j[self.order]
        self.sims = [np.empty(i.size, np.float32) for _ in range(n_enc)]

    def take(self, k: int, a: int, b: int, c: int, sim: np.ndarray) -> None:
        """Kept pairs among rows ``a:b`` × columns ``c:c + sim.shape[1]`` (``sim`` their similarities)."""
        lo, hi = np.searchsorted(self.i, [a, b])
        if lo == hi:
            return
        j = self.j[lo:hi]
        here = np.nonzero((j >= c) & (j < c + sim.shape[1]))[0]
        self.sims[k][lo + here] = sim[self.i[lo + here] - a, j[here] - c]

    def result(self, k: int) -> np.ndarray:
        s = np.empty_like(self.sims[k])
        s[self.order] = self.sims[k]
        return s


def sampled_pairs_stats(
    embs: Sequence[np.ndarray],
    lat: np.ndarray,
    lon: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    block: int = 1 << 16,
    dist_edges: np.ndarray | None = None,
    sim_bins: int = DEFAULT_SIM_BINS,
    progress: bool = True,
) -> list[PairStats]:
    """Like :func:`all_pairs_stats` but over the given pairs ``(i[k], j[k])`` (row indices)."""
    embs, lat_a, lon_a = _check(embs, lat, lon)
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    edges = default_distance_edges() if dist_edges is None else np.asarray(dist_edges, np.float64)
    stats = [PairStats(edges, sim_bins) for _ in embs]
    xyz = latlon_to_xyz(lat_a, lon_a)
    for a in tqdm(range(0, i.size, block), desc="pairs", unit="block", disable=not progress):
        ii, jj = i[a : a + block], j[a : a + block]
        blk = DistanceBlock(arc_km(np.einsum("ij,ij->i", xyz[ii], xyz[jj])), stats[0].sub_edges)
        for e, st in zip(embs, stats):
            st.add(pair_similarity(e, ii, jj), blk)
    return stats


def pair_similarity(e: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1 << 15) -> np.ndarray:
    """Dot products ``e[i[k]] · e[j[k]]`` as float32, computed in blocks of pairs."""
    out = np.empty(len(i), np.float32)
    for a in range(0, len(i), block):
        out[a : a + block] = np.einsum("ij,ij->i", e[i[a : a + block]], e[j[a : a + block]])
    return out


def random_pairs(n: int, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``m`` pairs of distinct rows drawn uniformly (with replacement) from ``n`` rows; ``i < j``."""
    if n < 2:
        raise AnalysisError("need at least 2 rows to draw pairs")
    i = rng.integers(0, n, m)
    j = rng.integers(0, n - 1, m)
    j = j + (j >= i)
    return np.minimum(i, j), np.maximum(i, j)


def spearman_pairs(
    embs: Sequence[np.ndarray],
    lat: np.ndarray,
    lon: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    sims: Sequence[np.ndarray] | None = None,
) -> list[float]:
    """Spearman's ρ between similarity and distance over the given pairs, one value per encoder.

    ``sims``: the pairs' similarities per encoder when already known (e.g. :attr:`PairStats.kept`);
    otherwise they are computed from the rows of ``embs``.
    """
    from scipy.stats import spearmanr

    embs, lat_a, lon_a = _check(embs, lat, lon)
    xyz = latlon_to_xyz(lat_a, lon_a)
    d = arc_km(np.einsum("ij,ij->i", xyz[i], xyz[j]))
    out = []
    for k, e in enumerate(embs):
        s = sims[k] if sims is not None else pair_similarity(e, i, j)
        out.append(float(spearmanr(s, d).statistic) if len(s) > 2 else float("nan"))
    return out
