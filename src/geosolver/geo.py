"""Geographic math: distances, the Geoscore, accuracy thresholds, spherical means, grid cells.

Conventions used everywhere in Geosolver:

* coordinates are ``(lat, lon)`` in **degrees**, ``lat`` in [-90, 90], ``lon`` in [-180, 180)
  (``lon == 180`` is accepted and treated as ``-180``);
* distances are in **kilometres** on a sphere of radius :data:`EARTH_RADIUS_KM`.

This module imports numpy only; the torch variant of haversine imports torch lazily.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from geosolver.errors import CoordinateError, InvalidValueError

EARTH_RADIUS_KM = 6371.0
GEOSCORE_SCALE_KM = 1492.7
GEOSCORE_MAX = 5000.0
ACCURACY_THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)


def validate_coords(lat, lon, what: str = "coordinates") -> tuple[np.ndarray, np.ndarray]:
    """Check coordinates and return them as float64 arrays.

    Args:
        lat: latitudes in degrees, scalar or array-like, each in [-90, 90].
        lon: longitudes in degrees, same shape as ``lat``, each in [-180, 180].
        what: a name for the values, used in the error message.

    Returns:
        ``(lat, lon)`` as float64 numpy arrays (0-d for scalars).

    Raises:
        CoordinateError: naming the first offending index and value.
    """
    lat_a = np.asarray(lat, dtype=np.float64)
    lon_a = np.asarray(lon, dtype=np.float64)
    if lat_a.shape != lon_a.shape:
        raise CoordinateError(f"{what}: lat shape {lat_a.shape} != lon shape {lon_a.shape}")
    bad = ~np.isfinite(lat_a) | ~np.isfinite(lon_a) | (np.abs(lat_a) > 90.0) | (np.abs(lon_a) > 180.0)
    if bad.any():
        idx = np.argwhere(np.atleast_1d(bad))[0][0] if lat_a.ndim else 0
        la, lo = float(np.atleast_1d(lat_a)[idx]), float(np.atleast_1d(lon_a)[idx])  # lat=200.0, not np.float64(200.0)
        n = int(np.count_nonzero(bad))
        raise CoordinateError(
            f"{what}: {n} invalid value(s); first at index {idx}: lat={la!r}, lon={lo!r} "
            "(need finite lat in [-90, 90] and lon in [-180, 180], in degrees)"
        )
    return lat_a, lon_a


def wrap_lon(lon):
    """Wrap longitudes in degrees into [-180, 180)."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0


def haversine(lat1, lon1, lat2, lon2, check: bool = True) -> np.ndarray:
    """Great-circle distance in km between ``(lat1, lon1)`` and ``(lat2, lon2)`` (degrees).

    Inputs broadcast against each other like numpy arrays, so ``haversine(lat[:, None],
    lon[:, None], lat[None], lon[None])`` gives a full distance matrix.

    Args:
        check: validate coordinates (raise :class:`CoordinateError` on NaN / out of range).

    Returns:
        float64 array of distances in km (0-d for scalar inputs).
    """
    if check:
        lat1, lon1 = validate_coords(lat1, lon1, "first point")
        lat2, lon2 = validate_coords(lat2, lon2, "second point")
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def haversine_torch(lat1, lon1, lat2, lon2):
    """Torch version of :func:`haversine` (degrees in, km out, broadcasting, differentiable).

    No validation is done (it would force a device sync); callers validate on the way in.
    """
    import torch  # torch: optional heavy backend

    p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
    dphi = p2 - p1
    dlmb = torch.deg2rad(lon2 - lon1)
    a = torch.sin(dphi / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlmb / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(torch.clamp(a, 0.0, 1.0)))


def geoscore(km) -> np.ndarray:
    """OSV5M / GeoGuessr-style score ``5000 * exp(-km / 1492.7)`` for distances in km."""
    return GEOSCORE_MAX * np.exp(-np.asarray(km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def accuracy_at(km, thresholds_km: Sequence[float] = ACCURACY_THRESHOLDS_KM) -> dict[str, float]:
    """Share of distances (km) at or below each threshold, keyed ``"acc@<t>km"``."""
    d = np.asarray(km, dtype=np.float64).ravel()
    if d.size == 0:
        raise InvalidValueError("accuracy_at: no distances given")
    return {f"acc@{t:g}km": float(np.mean(d <= t)) for t in thresholds_km}


def distance_metrics(km) -> dict[str, float]:
    """All headline metrics for an array of errors in km.

    Returns:
        ``geoscore`` (mean), ``median_km``, ``mean_km``, ``n`` and ``acc@<t>km`` entries.
    """
    d = np.asarray(km, dtype=np.float64).ravel()
    if d.size == 0:
        raise InvalidValueError("distance_metrics: no distances given")
    out = {
        "n": int(d.size),
        "geoscore": float(geoscore(d).mean()),
        "median_km": float(np.median(d)),
        "mean_km": float(d.mean()),
    }
    out.update(accuracy_at(d))
    return out


def latlon_to_xyz(lat, lon) -> np.ndarray:
    """Unit vectors on the sphere, shape ``(..., 3)``, for lat/lon in degrees."""
    la, lo = np.radians(np.asarray(lat, dtype=np.float64)), np.radians(np.asarray(lon, dtype=np.float64))
    cl = np.cos(la)
    return np.stack([cl * np.cos(lo), cl * np.sin(lo), np.sin(la)], axis=-1)


def xyz_to_latlon(xyz) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`latlon_to_xyz` (vectors need not be unit length); degrees out, lon in [-180, 180)."""
    v = np.asarray(xyz, dtype=np.float64)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = wrap_lon(np.degrees(np.arctan2(y, x)))
    return lat, lon


def spherical_mean(lat, lon, weights=None, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean position on the sphere (via 3-D unit vectors).

    Correct across the antimeridian and near the poles, unlike averaging degrees. When the
    weighted vectors cancel out (e.g. two antipodal points) the result falls back to the
    point with the largest weight.

    Args:
        lat, lon: degrees, shape ``(..., n)`` (points along ``axis``).
        weights: non-negative, broadcastable to ``lat``; ``None`` means equal weights.
        axis: the axis that holds the points.

    Returns:
        ``(lat, lon)`` of the mean, in degrees, with ``axis`` removed.
    """
    xyz = latlon_to_xyz(lat, lon)  # (..., n, 3) if axis=-1
    lat_a = np.asarray(lat, dtype=np.float64)
    w = np.ones_like(lat_a) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), lat_a.shape)
    if (w < 0).any() or not np.isfinite(w).all():
        raise InvalidValueError("spherical_mean: weights must be finite and non-negative")
    ax = axis % lat_a.ndim
    xyz = np.moveaxis(xyz, ax, -2)  # (..., n, 3)
    wm = np.moveaxis(w, ax, -1)[..., None]  # (..., n, 1)
    s = (xyz * wm).sum(axis=-2)  # (..., 3)
    norm = np.linalg.norm(s, axis=-1)
    degenerate = norm < 1e-9 * np.maximum(wm.sum(axis=(-2, -1)), 1e-300)
    if np.any(degenerate):
        best = np.take_along_axis(xyz, np.argmax(wm[..., 0], axis=-1)[..., None, None], axis=-2)[..., 0, :]
        s = np.where(degenerate[..., None], best, s)
    return xyz_to_latlon(s)


def medoid(lat, lon, weights=None) -> int:
    """Index of the point minimising the (weighted) sum of great-circle distances to the others."""
    lat_a, lon_a = validate_coords(lat, lon, "medoid points")
    d = haversine(lat_a[:, None], lon_a[:, None], lat_a[None, :], lon_a[None, :], check=False)
    w = np.ones(len(lat_a)) if weights is None else np.asarray(weights, dtype=np.float64)
    return int(np.argmin(d @ w))


def grid_cell(lat, lon, size_deg: float = 1.0) -> np.ndarray:
    """Integer id of the lon/lat grid cell containing each point.

    Cells are ``size_deg`` × ``size_deg`` degrees, rows counted from the south pole and columns
    from 180° W; lat = 90 falls in the top row, lon = 180 wraps to -180.

    Returns:
        int64 array ``row * n_cols + col``.
    """
    if not (0 < size_deg <= 180):
        raise InvalidValueError(f"grid_cell: size_deg must be in (0, 180], got {size_deg}")
    lat_a, lon_a = validate_coords(lat, lon, "grid_cell")
    n_rows = int(np.ceil(180.0 / size_deg))
    n_cols = int(np.ceil(360.0 / size_deg))
    row = np.clip(np.floor((lat_a + 90.0) / size_deg), 0, n_rows - 1).astype(np.int64)
    col = np.clip(np.floor((wrap_lon(lon_a) + 180.0) / size_deg), 0, n_cols - 1).astype(np.int64)
    return row * n_cols + col


def grid_cell_label(lat, lon, size_deg: float = 1.0) -> list[str]:
    """Human-readable cell names like ``"c1.0:48N_002E"`` (south-west corner of the cell)."""
    lat_a, lon_a = validate_coords(np.atleast_1d(lat), np.atleast_1d(lon), "grid_cell_label")
    s = float(size_deg)
    la0 = np.floor((lat_a + 90.0) / s) * s - 90.0
    lo0 = np.floor((wrap_lon(lon_a) + 180.0) / s) * s - 180.0
    la0 = np.minimum(la0, 90.0 - s)
    return [
        f"c{s:g}:{abs(a):g}{'N' if a >= 0 else 'S'}_{abs(o):g}{'E' if o >= 0 else 'W'}"
        for a, o in zip(la0, lo0)
    ]


def random_points_on_sphere(n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the sphere's surface, as ``(lat, lon)`` in degrees."""
    rng = np.random.default_rng(rng)
    z = rng.uniform(-1.0, 1.0, n)
    lon = rng.uniform(-180.0, 180.0, n)
    return np.degrees(np.arcsin(z)), lon
