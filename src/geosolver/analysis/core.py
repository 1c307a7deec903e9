"""``analyze`` (:class:`AnalyzeConfig` → :func:`analyze` → :class:`AnalyzeResult`): compare how well encoders' embedding spaces reflect geography.

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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from geosolver.errors import AnalysisError
from geosolver.files import jsonable
from geosolver.geo import haversine, validate_coords
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore

from .config import AnalyzeConfig
from .curve import count_rises, fit_monotone_curve, MonotoneCurve
from .diagnostics import diagnostics
from .pairs import FAR_KM, NEAR_KM, PairStats, all_pairs_stats, random_pairs, sampled_pairs_stats, spearman_pairs
from .report import write_report

log = logging.getLogger(__name__)

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


@dataclass
class AnalyzeResult:
    """What :func:`analyze` wrote: ``stats`` is the content of ``stats.json`` (``n_images``,
    ``n_pairs``, ``mode``, ``spearman_method``, ``timings``, and per encoder ``encoders[name]``
    every number of the report)."""

    out: Path
    stats: dict
    seconds: float


def _pair_pass(cfg: AnalyzeConfig, stores, rows, lat, lon, diag_sel, rng, lap):
    """The pair statistics, Spearman ρ and the diagnostics' embeddings, all-pairs or random-pairs mode."""
    if cfg.pairs is None:
        embs = [s.embeddings(r[diag_sel]) for s, r in zip(stores, rows)]
        la, lo = lat[diag_sel], lon[diag_sel]
        lap("load_s")
        n = diag_sel.size
        n_pairs = n * (n - 1) // 2
        if n_pairs <= cfg.spearman_exact_max_pairs:
            si, sj = np.triu_indices(n, k=1)
            sp_method = f"exact over all {n_pairs:,} pairs"
        else:
            si, sj = random_pairs(n, cfg.spearman_subsample, rng)
            sp_method = f"{cfg.spearman_subsample:,} uniformly random pairs of the {n_pairs:,} (seed {cfg.seed})"
        stats = all_pairs_stats(embs, la, lo, block=cfg.block, progress=cfg.progress, keep_pairs=(si, sj))
        lap("pairs_s")
        spear = spearman_pairs(embs, la, lo, si, sj, sims=[st.kept for st in stats])
        lap("spearman_s")
        return stats, spear, sp_method, embs, n_pairs, n
    pi, pj = random_pairs(len(lat), int(cfg.pairs), rng)
    used, inv = np.unique(np.concatenate([pi, pj]), return_inverse=True)
    pi, pj = inv[: len(pi)], inv[len(pi) :]
    embs = [s.embeddings(r[used]) for s, r in zip(stores, rows)]
    la, lo = lat[used], lon[used]
    lap("load_s")
    stats = sampled_pairs_stats(embs, la, lo, pi, pj, progress=cfg.progress)
    lap("pairs_s")
    n_pairs = int(cfg.pairs)
    k = n_pairs if n_pairs <= cfg.spearman_exact_max_pairs else min(cfg.spearman_subsample, n_pairs)
    spear = spearman_pairs(embs, la, lo, pi[:k], pj[:k])
    sp_method = f"exact over all {n_pairs:,} pairs" if k == n_pairs else f"the first {k:,} of the {n_pairs:,} random pairs"
    lap("spearman_s")
    del embs
    diag_embs = [s.embeddings(r[diag_sel]) for s, r in zip(stores, rows)]
    return stats, spear, sp_method, diag_embs, n_pairs, int(len(used))


def analyze(cfg: AnalyzeConfig) -> AnalyzeResult:
    """Analyse one or more embedding stores of the same images and write a report into ``cfg.out``.

    N = ``cfg.sample`` images are drawn (without replacement) from the shared ids; all ``N(N−1)/2``
    pairs are analysed, and the collapse diagnostics use these N images. With ``cfg.pairs``, that
    many random pairs of distinct images drawn from *all* shared ids are analysed instead
    (diagnostics still use the sample). Spearman is exact over all pairs up to
    ``spearman_exact_max_pairs`` pairs; above, it is computed on ``spearman_subsample`` uniformly
    random pairs (same images and pairs for every store).
    """
    t0 = time.time()
    paths = [Path(p) for p in cfg.stores]
    if not paths:
        raise AnalysisError("give at least one embedding store")
    if cfg.sample < 2:
        raise AnalysisError(f"--sample must be at least 2, got {cfg.sample}")
    if cfg.pairs is not None and cfg.pairs < 1:
        raise AnalysisError(f"--pairs must be positive, got {cfg.pairs}")
    stores = [EmbeddingStore(p) for p in paths]
    names = list(cfg.names) if cfg.names else _default_names(stores)
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

    run = RunDir(cfg.out, "analyze")  # before the long part: a --out that is a file fails now
    rows, ids, lat, lon = align_stores(stores)
    validate_coords(lat, lon, f"coordinates of {stores[0].path}")
    m = len(ids)
    rng = np.random.default_rng(cfg.seed)
    diag_sel = np.sort(rng.choice(m, size=min(cfg.sample, m), replace=False))
    log.info("%d shared images; sample %d", m, diag_sel.size)
    stats, spear, sp_method, diag_embs, n_pairs, n_images = _pair_pass(cfg, stores, rows, lat, lon, diag_sel, rng, lap)
    mode = "all_pairs" if cfg.pairs is None else "random_pairs"

    encoders: dict[str, dict] = {}
    curves: dict[str, MonotoneCurve] = {}
    for name, slug, store, st, rho, e in zip(names, slugs, stores, stats, spear, diag_embs):
        # all-pairs mode: the pair pass already summed the uniformity over exactly these images
        diag = diagnostics(e, uniformity_value=st.uniformity() if mode == "all_pairs" else None)
        summ, curve = encoder_summary(st, rho, diag)
        encoders[name] = {"store": str(store.path), "encoder": store.encoder, "slug": slug, **summ}
        curves[name] = curve
    lap("diagnostics_s")

    result = jsonable(
        {
            "n_shared_images": m,
            "n_images": n_images,
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
        "out": str(cfg.out),
        "sample": cfg.sample,
        "pairs": cfg.pairs,
        "seed": cfg.seed,
        "block": cfg.block,
        "spearman_exact_max_pairs": cfg.spearman_exact_max_pairs,
        "spearman_subsample": cfg.spearman_subsample,
        "distance_bins_km": stats[0].dist_edges,
        "similarity_bins": stats[0].sim_bins,
    }
    run.write_config(config)
    for name, slug in zip(names, slugs):
        run.write_text(f"curve_{slug}.json", curves[name].to_json() + "\n")
    if cfg.report:
        write_report(run.path, result, dict(zip(names, stats)), curves)
        lap("report_s")
    result["timings"] = dict(timings)
    result["seconds"] = round(time.time() - t0, 2)
    run.write_json("stats.json", result)
    return AnalyzeResult(out=run.path, stats=result, seconds=result["seconds"])


def analyze_stores(paths: Sequence[str | os.PathLike], out: str | os.PathLike, **settings) -> dict:
    """:func:`analyze` with an :class:`AnalyzeConfig` of ``paths``, ``out`` and the other settings
    (its fields); returns the content of ``stats.json``."""
    return analyze(AnalyzeConfig(stores=[str(p) for p in paths], out=str(out), **settings)).stats
