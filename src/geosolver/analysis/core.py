"""``analyze_stores``: compare how well encoders' embedding spaces reflect geography.

For one or more :class:`~geosolver.store.EmbeddingStore` (one per encoder, same images) this
aligns the stores by ``id``, draws one sample for all of them, accumulates exact pair
statistics (:mod:`.pairs`), fits the ideal monotone curve (:mod:`.curve`), computes collapse
diagnostics (:mod:`.diagnostics`) and writes a report (:mod:`.report`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from geosolver.errors import AnalysisError
from geosolver.files import jsonable
from geosolver.geo import haversine, validate_coords
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore

from .curve import count_rises, fit_monotone_curve, MonotoneCurve
from .diagnostics import diagnostics
from .pairs import (
    FAR_KM,
    NEAR_KM,
    PairStats,
    all_pairs_stats,
    random_pairs,
    sampled_pairs_stats,
    spearman_pairs,
)

log = logging.getLogger(__name__)

SPEARMAN_EXACT_MAX_PAIRS = 2_000_000
SPEARMAN_SUBSAMPLE_PAIRS = 1_000_000
COORD_TOLERANCE_KM = 1.0


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "encoder"


def _default_names(stores: Sequence[EmbeddingStore]) -> list[str]:
    names = [str(s.encoder.get("name") or s.path.name) for s in stores]
    if len(set(names)) < len(names):  # same encoder name twice: disambiguate by directory
        names = [f"{n} ({s.path.name})" for n, s in zip(names, stores)]
    if len(set(names)) < len(names):
        names = [f"{n} #{k + 1}" for k, n in enumerate(names)]
    return names


def align_stores(stores: Sequence[EmbeddingStore]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Rows of every store that hold the same images, matched by ``id``.

    Ids present in all stores are kept, in the first store's order; a duplicated id keeps its
    first row.

    Returns:
        ``(rows, ids, lat, lon)``: ``rows[k]`` is the ``(m,)`` int64 row index into store ``k``;
        ``ids`` the ``(m,)`` shared ids (as str); ``lat``/``lon`` degrees from the first store.

    Raises:
        AnalysisError: no shared ids, or a shared id's coordinates differ by more than 1 km.
    """
    index = []
    for s in stores:
        ids = s.metadata["id"].astype(str).to_numpy()
        _, first = np.unique(ids, return_index=True)
        if len(first) < len(ids):
            log.warning("%s: %d duplicated id(s); using the first row of each", s.path, len(ids) - len(first))
        index.append({ids[r]: int(r) for r in np.sort(first)})
    common = [i for i in index[0] if all(i in ix for ix in index[1:])]
    if len(common) < 2:
        raise AnalysisError(
            f"the stores share {len(common)} image id(s); need at least 2 ({', '.join(str(s.path) for s in stores)})"
        )
    rows = [np.fromiter((ix[i] for i in common), np.int64, len(common)) for ix in index]
    lat0, lon0 = (a[rows[0]] for a in stores[0].coords())
    for s, r in zip(stores[1:], rows[1:]):
        lat, lon = (a[r] for a in s.coords())
        dk = haversine(lat0, lon0, lat, lon, check=False)
        bad = np.nonzero(dk > COORD_TOLERANCE_KM)[0]
        if bad.size:
            k = int(bad[0])
            raise AnalysisError(
                f"{s.path}: {bad.size} shared id(s) have other coordinates than in {stores[0].path}; "
                f"first: id {common[k]!r} at ({lat[k]}, {lon[k]}) vs ({lat0[k]}, {lon0[k]})"
            )
    return rows, np.asarray(common, dtype=object), np.asarray(lat0, np.float64), np.asarray(lon0, np.float64)


def encoder_summary(st: PairStats, spearman: float, diag: dict) -> tuple[dict, MonotoneCurve]:
    """All numbers for one encoder from its pair statistics, Spearman ρ and diagnostics."""
    b = st.binned()
    curve = fit_monotone_curve(st.bin_centers_km, b["mean"], b["count"])
    mean_sim = st.mean_sim()
    mse_iso = st.mse(curve)
    mse_const = st.mse(lambda km: np.full_like(np.asarray(km, np.float64), mean_sim))
    rises = count_rises(b["mean"], b["std"], b["count"])
    out = {
        "n_pairs": st.n_pairs,
        "mean_pair_similarity": mean_sim,
        "pearson": st.pearson(),
        "spearman": spearman,
        **st.false_friends(),
        "mse_isotonic": mse_iso,
        "mse_constant": mse_const,
        "mse_binned_mean": st.mse_binned_mean(),
        "r2_isotonic": 1.0 - mse_iso / mse_const if mse_const > 0 else float("nan"),
        "rising_bins": rises["rises"],
        "monotonicity_violations": rises["violations"],
        "diagnostics": diag,
        "curve": curve.to_dict(),
        "binned": {
            "edges_km": st.dist_edges,
            "count": b["count"],
            "mean_km": b["mean_km"],
            "mean_sim": b["mean"],
            "std_sim": b["std"],
        },
    }
    return out, curve


def analyze_stores(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    sample: int = 5000,
    pairs: int | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
    block: int = 256,
    spearman_exact_max_pairs: int = SPEARMAN_EXACT_MAX_PAIRS,
    spearman_subsample: int = SPEARMAN_SUBSAMPLE_PAIRS,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Analyse one or more embedding stores of the same images and write a report.

    Args:
        paths: store directories, one per encoder.
        out: output directory (created): ``report.html``, ``report.md`` + PNGs, ``stats.json``,
            ``config.json``, ``curve_<name>.json`` (the fitted μ(d), see :class:`MonotoneCurve`).
        sample: N, images drawn (without replacement) from the shared ids; all ``N(N−1)/2``
            pairs are analysed, and the collapse diagnostics use these N images.
        pairs: if given, analyse this many random pairs of distinct images drawn from *all*
            shared ids instead of all pairs of the sample (diagnostics still use the sample).
        seed: random seed of the sample and pairs (same images and pairs for every store).
        names: display names, one per store (default: the encoders' names).
        block: rows per block of the all-pairs pass.
        spearman_exact_max_pairs: Spearman is exact over all pairs up to this many pairs;
            above, it is computed on ``spearman_subsample`` uniformly random pairs.
        progress: show progress bars.
        report: write report.html / report.md / PNGs (stats.json and config.json always).

    Returns:
        The content of ``stats.json``: ``n_images``, ``n_pairs``, ``mode``, ``spearman_method``,
        and per encoder (``encoders[name]``) every number of the report.
    """
    t0 = time.time()
    paths = [Path(p) for p in paths]
    if not paths:
        raise AnalysisError("give at least one embedding store")
    if sample < 2:
        raise AnalysisError(f"--sample must be at least 2, got {sample}")
    if pairs is not None and pairs < 1:
        raise AnalysisError(f"--pairs must be positive, got {pairs}")
    stores = [EmbeddingStore(p) for p in paths]
    names = list(names) if names else _default_names(stores)
    if len(names) != len(stores):
        raise AnalysisError(f"got {len(names)} name(s) for {len(stores)} store(s): {names}")
    if len(set(names)) < len(names):
        raise AnalysisError(f"names must be distinct: {names}")
    slugs = [_slug(n) for n in names]
    if len(set(slugs)) < len(slugs):
        slugs = [f"{s}-{k + 1}" for k, s in enumerate(slugs)]

    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def lap(key: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[key] = round(timings.get(key, 0.0) + now - tick, 2)
        tick = now

    run = RunDir(out, "analyze")  # before the long part: a --out that is a file fails now
    rows, ids, lat, lon = align_stores(stores)
    validate_coords(lat, lon, f"coordinates of {stores[0].path}")
    m = len(ids)
    rng = np.random.default_rng(seed)
    diag_sel = np.sort(rng.choice(m, size=min(sample, m), replace=False))
    log.info("%d shared images; sample %d", m, diag_sel.size)

    if pairs is None:
        sel = diag_sel
        embs = [s.embeddings(r[sel]) for s, r in zip(stores, rows)]
        la, lo = lat[sel], lon[sel]
        lap("load_s")
        stats = all_pairs_stats(embs, la, lo, block=block, progress=progress)
        lap("pairs_s")
        n = sel.size
        n_pairs = n * (n - 1) // 2
        if n_pairs <= spearman_exact_max_pairs:
            si, sj = np.triu_indices(n, k=1)
            sp_method = f"exact over all {n_pairs:,} pairs"
        else:
            si, sj = random_pairs(n, spearman_subsample, rng)
            sp_method = f"{spearman_subsample:,} uniformly random pairs of the {n_pairs:,} (seed {seed})"
        spear = spearman_pairs(embs, la, lo, si, sj)
        lap("spearman_s")
        diag_embs = embs
        mode = "all_pairs"
    else:
        pi, pj = random_pairs(m, int(pairs), rng)
        used, inv = np.unique(np.concatenate([pi, pj]), return_inverse=True)
        pi, pj = inv[: len(pi)], inv[len(pi) :]
        embs = [s.embeddings(r[used]) for s, r in zip(stores, rows)]
        la, lo = lat[used], lon[used]
        lap("load_s")
        stats = sampled_pairs_stats(embs, la, lo, pi, pj, progress=progress)
        lap("pairs_s")
        n_pairs = int(pairs)
        k = n_pairs if n_pairs <= spearman_exact_max_pairs else min(spearman_subsample, n_pairs)
        spear = spearman_pairs(embs, la, lo, pi[:k], pj[:k])
        sp_method = f"exact over all {n_pairs:,} pairs" if k == n_pairs else f"the first {k:,} of the {n_pairs:,} random pairs"
        lap("spearman_s")
        diag_embs = [s.embeddings(r[diag_sel]) for s, r in zip(stores, rows)]
        mode = "random_pairs"
        del embs

    encoders: dict[str, dict] = {}
    curves: dict[str, MonotoneCurve] = {}
    for name, slug, store, st, rho, e in zip(names, slugs, stores, stats, spear, diag_embs):
        # all-pairs mode: the pair pass already summed the uniformity over exactly these images
        diag = diagnostics(e, uniformity_value=st.uniformity() if mode == "all_pairs" else None)
        summ, curve = encoder_summary(st, rho, diag)
        summ = {"store": str(store.path), "encoder": store.encoder, "slug": slug, **summ}
        encoders[name] = summ
        curves[name] = curve
    lap("diagnostics_s")

    result = jsonable(
        {
            "n_shared_images": m,
            "n_images": int(diag_sel.size) if pairs is None else int(len(used)),
            "n_diagnostics_images": int(diag_sel.size),
            "n_pairs": n_pairs,
            "mode": mode,
            "spearman_method": sp_method,
            "near_km": NEAR_KM,
            "far_km": FAR_KM,
            "seconds": None,  # filled in below, after the report
            "timings": timings,
            "encoders": encoders,
        }
    )
    config = {
        "stores": [str(p) for p in paths],
        "names": names,
        "out": str(out),
        "sample": sample,
        "pairs": pairs,
        "seed": seed,
        "block": block,
        "spearman_exact_max_pairs": spearman_exact_max_pairs,
        "spearman_subsample": spearman_subsample,
        "distance_bins_km": stats[0].dist_edges,
        "similarity_bins": stats[0].sim_bins,
    }
    run.write_config(config)
    for name, slug in zip(names, slugs):
        run.write_text(f"curve_{slug}.json", curves[name].to_json() + "\n")
    if report:
        from .report import write_report

        write_report(run.path, result, dict(zip(names, stats)), curves)
        lap("report_s")
    result["timings"] = dict(timings)
    result["seconds"] = round(time.time() - t0, 2)
    run.write_json("stats.json", result)
    return result
