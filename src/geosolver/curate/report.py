"""Coverage numbers, the world map, and the end-to-end ``curate select`` (:func:`curate_store`)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from geosolver.curate.groups import CurationError, group_size_histogram
from geosolver.curate.sampling import COVERAGE_CELL_DEG, CurationResult, select
from geosolver.geo import EARTH_RADIUS_KM, grid_cell, latlon_to_xyz, random_points_on_sphere
from geosolver.geodata import is_land  # bit-packed, memory-mapped mask (~40 MB resident), mapped on first call
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore


# ------------------------------------------------------------------------------------------
# coverage
# ------------------------------------------------------------------------------------------
def entropy_bits(values: pd.Series) -> float:
    """Shannon entropy (bits) of the distribution of ``values`` (NaN counts as a value)."""
    p = values.value_counts(dropna=False).to_numpy(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0


def random_land_points(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the Earth's land surface, ``(lat, lon)`` degrees (rejection sampling)."""
    rng = np.random.default_rng(seed)
    lats, lons, got = [], [], 0
    while got < n:
        la, lo = random_points_on_sphere(4 * n, rng)
        lo = np.clip(lo, -180.0, 179.999999)
        keep = is_land(la, lo)
        lats.append(la[keep])
        lons.append(lo[keep])
        got += int(keep.sum())
    return np.concatenate(lats)[:n], np.concatenate(lons)[:n]


def nearest_km(lat_q, lon_q, lat_g, lon_g) -> np.ndarray:
    """Great-circle km from each query point to its nearest gallery point (KD-tree on unit vectors)."""
    from scipy.spatial import cKDTree  # scipy: heavy (~0.2 s), loaded on first use

    # an unbalanced tree builds several times faster on millions of points; queries stay exact
    tree = cKDTree(latlon_to_xyz(lat_g, lon_g), balanced_tree=False, compact_nodes=False)
    chord, _ = tree.query(latlon_to_xyz(lat_q, lon_q), k=1)
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


def coverage(meta: pd.DataFrame, land_points: tuple[np.ndarray, np.ndarray] | None = None,
             cell_deg: float = COVERAGE_CELL_DEG) -> dict[str, Any]:
    """Coverage numbers of a set of images.

    Returns:
        ``images``; ``cells_covered`` (distinct ``cell_deg`` lon/lat cells); ``entropy_bits`` of
        ``land_cover`` / ``climate`` / ``soil`` where those columns exist (with ``n_classes``);
        ``land_median_km`` / ``land_mean_km`` / ``land_p90_km``: distance from the random land
        points to their nearest image.
    """
    lat, lon = meta["lat"].to_numpy(np.float64), meta["lon"].to_numpy(np.float64)
    out: dict[str, Any] = {"images": int(len(meta)), "cell_deg": float(cell_deg)}
    out["cells_covered"] = int(np.unique(grid_cell(lat, lon, cell_deg)).size) if len(meta) else 0
    for c in ("land_cover", "climate", "soil"):
        if c in meta.columns:
            out[f"{c}_entropy_bits"] = entropy_bits(meta[c])
            out[f"{c}_n_classes"] = int(meta[c].nunique(dropna=False))
    if land_points is not None and len(meta):
        d = nearest_km(land_points[0], land_points[1], lat, lon)
        out.update(land_points=int(d.size), land_median_km=float(np.median(d)), land_mean_km=float(d.mean()),
                   land_p90_km=float(np.percentile(d, 90)))
    return out


def format_coverage(before: dict, after: dict) -> str:
    """Before/after coverage as an aligned text table."""
    keys = [k for k in before if k in after and k not in ("cell_deg", "land_points")]
    lines = [f"{'coverage':<24} {'store':>14} {'gallery':>14}"]
    for k in keys:
        a, b = before[k], after[k]
        fmt = (lambda v: f"{v:,.2f}") if isinstance(a, float) else (lambda v: f"{v:,}")
        lines.append(f"{k:<24} {fmt(a):>14} {fmt(b):>14}")
    return "\n".join(lines)


def plot_map(meta_all: pd.DataFrame, rows: np.ndarray, path: str | os.PathLike, title: str = "", max_background: int = 300_000,
             seed: int = 0) -> None:
    """World map (lon/lat scatter): all images light grey, chosen ones coloured; saved to ``path``."""
    import matplotlib  # matplotlib: heavy, loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn

    lat, lon = meta_all["lat"].to_numpy(), meta_all["lon"].to_numpy()
    bg = np.arange(len(lat))
    if bg.size > max_background:
        bg = np.random.default_rng(seed).choice(bg, max_background, replace=False)
    fig, ax = plt.subplots(figsize=(14, 7), dpi=100)
    ax.scatter(lon[bg], lat[bg], s=1, c="#cccccc", linewidths=0, rasterized=True, label=f"store ({len(lat):,})")
    dot = float(np.clip(3e4 / max(len(rows), 1), 0.3, 8.0))  # smaller dots for bigger galleries
    ax.scatter(lon[rows], lat[rows], s=dot, c="#d62728", linewidths=0, rasterized=True, label=f"gallery ({len(rows):,})")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude (deg)")
    ax.set_ylabel("latitude (deg)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", markerscale=6)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------
def curate_store(
    store_path: str | os.PathLike,
    out: str | os.PathLike,
    size: int,
    by: Sequence[str] | None = None,
    strategy: str = "grouped-clustered",
    seed: int = 0,
    cluster_threshold: int = 20,
    cell_size: float = COVERAGE_CELL_DEG,
    land_points: int = 2000,
    make_map: bool = True,
    **kwargs: Any,
) -> tuple[CurationResult, dict[str, Any]]:
    """Curate ``store_path`` into a new gallery store at ``out`` and write the report.

    Writes into ``out``: the gallery store (rows in selection order), ``curation.json``
    (settings, group-size histograms, images taken from every group that gave any), ``config.json`` (effective
    configuration), ``coverage.json`` (before/after) and ``map.png``.

    Args:
        store_path: source store directory.
        out: gallery store directory (must not hold a store yet).
        size, by, strategy, seed, cluster_threshold, cell_size, **kwargs: see :func:`select`.
        land_points: random land points for the nearest-image distance (0 to skip).
        make_map: write ``map.png``.

    Returns:
        ``(result, coverage)`` where coverage is ``{"before": {...}, "after": {...}}``.
    """
    store = EmbeddingStore(store_path)
    out = Path(out)
    if (out / "manifest.json").exists():
        raise CurationError(f"{out} already holds a store; pick another --out")
    run = RunDir(out, "curate select")
    meta = store.metadata
    res = select(store, size, by=by, strategy=strategy, seed=seed, cluster_threshold=cluster_threshold,
                 cell_size=cell_size, meta=meta, **kwargs)
    config = {"command": run.command, "store": str(store_path), "out": str(out), **res.settings,
              "land_points": int(land_points), "make_map": bool(make_map)}
    t = time.perf_counter()
    store.subset(res.rows, out, config={"curation": config})
    res.timings["write"] = time.perf_counter() - t
    t = time.perf_counter()
    lp = random_land_points(land_points, seed=0) if land_points > 0 else None
    cov = {"before": coverage(meta, lp), "after": coverage(meta.iloc[res.rows], lp),
           "land_points_seed": 0, "cell_deg": COVERAGE_CELL_DEG}
    res.timings["coverage"] = time.perf_counter() - t
    per_group = res.per_group_table(taken_only=True)
    curation = {
        "settings": res.settings,
        "by_used": res.by,
        "rows_in": int(len(meta)),
        "rows_out": int(res.rows.size),
        "groups": int(len(res.group_sizes)),
        "groups_taken": int((res.per_group_counts > 0).sum()),
        "rounds": int(res.rounds),
        "clustered_groups": int(res.n_clustered_groups),
        "group_size_histogram": group_size_histogram(res.group_sizes).to_dict(orient="records"),
        "taken_per_group_histogram": group_size_histogram(res.per_group_counts[res.per_group_counts > 0]).to_dict(orient="records"),
        "per_group_taken": per_group.to_dict(orient="records"),
        "timings_s": res.timings,
    }
    if make_map:
        t = time.perf_counter()
        plot_map(meta, res.rows, out / "map.png", title=f"{strategy}: {res.rows.size:,} of {len(meta):,} images (seed {seed})")
        res.timings["map"] = time.perf_counter() - t
    curation["timings_s"] = res.timings
    run.write_json("curation.json", curation)
    run.write_json("coverage.json", cov)
    run.write_config(config)
    return res, cov
