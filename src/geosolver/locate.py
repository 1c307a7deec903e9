"""Geolocation by retrieval: the k nearest gallery embeddings vote for a location.

One search, one vote: :meth:`Neighbours.search` (a :class:`~geosolver.index.KnnIndex` search
through :func:`search_excluding`, plus the neighbours' coordinates) finds the top-k of a batch of
queries, and :meth:`Neighbours.vote` turns them into a :class:`Vote` (lat, lon, confidence) with
one of the strategies below (:func:`aggregate`). :class:`Geolocator`, ``geosolver evaluate`` /
:func:`geosolver.evaluate.tune` and training-time validation all go through these two.

Aggregation strategies (all vectorised over a batch of queries, shapes ``(n, k)``):
* ``nn``: the location of the single most similar gallery image.
* ``weighted-mean``: spherical mean of the top-k locations, weighted by
  ``softmax(similarity / temperature)`` — smooth, but a few far-away look-alikes pull the
  guess towards the middle of nowhere (e.g. the ocean between two continents).
* ``densest``: for each of the k neighbours taken as a candidate centre, the softmax mass of the
  neighbours within ``radius_km`` of it (k × k haversine per query); the candidate with the most
  mass wins (ties: the more similar candidate), and the guess is the weighted spherical mean of
  the neighbours within ``radius_km`` of it. Robust to far-away look-alikes: they only win
  if they carry more similarity mass than the true neighbourhood.

**Priors** (optional, every strategy): each neighbour's softmax weight can be multiplied by a
location prior's probability of the neighbour's place before the vote — the zero-shot text
model's probability of its country, or a learned location head's (:mod:`geosolver.heads`)
probability of its cell / density at its point (``prior=`` factors on :meth:`Neighbours.vote`,
a :class:`~geosolver.prior.LocationPrior` on :meth:`Geolocator.locate_embeddings`; the rule and
its weight λ are in :mod:`geosolver.prior`). Factors that are all exactly 1 (λ = 0) are the
plain vote, bit for bit.

**Confidence** (every strategy): the share of the top-k softmax mass lying within ``radius_km``
of the guess, in [0, 1]. 1 means every neighbour (weighted by similarity) agrees with the guess
to within ``radius_km``; with ``k = 1`` it is trivially 1.

Defaults ``k = 10``, ``temperature = 0.05``, ``radius_km = 500`` were picked on synthetic
galleries (see the README); re-tune them on real data with ``geosolver evaluate``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from geosolver.encoders import EncoderSpec, load_encoder
from geosolver.errors import LocateError
from geosolver.geo import haversine, spherical_mean
from geosolver.images import open_image
from geosolver.index import KnnIndex, index_for_store
from geosolver.names import DEFAULT_K, DEFAULT_RADIUS_KM, DEFAULT_STRATEGY, DEFAULT_TEMPERATURE, STRATEGIES  # re-exported
from geosolver.numeric import softmax_weights
from geosolver.places import country_of
from geosolver.prior import DEFAULT_PRIOR_WEIGHT, TEXT_GROUPING, LocationPrior, TextPrior, check_grouping, vote_factors
from geosolver.store import EmbeddingStore, encoder_compatible
from geosolver.zeroshot import ZeroShot

if TYPE_CHECKING:  # torch-free at import time: the encoder backends load torch on first use
    from geosolver.encoders import Encoder

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------
# aggregation (pure numpy)
# ----------------------------------------------------------------------------------------------
def aggregate(
    sims: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    strategy: str = DEFAULT_STRATEGY,
    temperature: float = DEFAULT_TEMPERATURE,
    radius_km: float = DEFAULT_RADIUS_KM,
    prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn each query's top-k neighbours into one location.

    Args:
        sims: ``(n, k)`` similarities, best first (``-inf`` marks a missing neighbour).
        lat, lon: ``(n, k)`` neighbour coordinates in degrees (any finite value where missing).
        strategy: ``nn``, ``weighted-mean`` or ``densest`` (see the module docstring).
        temperature: softmax temperature on similarities.
        radius_km: neighbourhood radius (km) for ``densest`` and for the confidence.
        prior: ``(n, k)`` factors > 0 multiplied into the softmax weights (renormalised) before
            the vote — the text prior of :mod:`geosolver.prior`; ``nn`` then takes the neighbour
            with the largest fused weight. ``None``: the plain vote.

    Returns:
        ``(lat, lon, confidence)``: three ``(n,)`` float64 arrays (degrees, degrees, [0, 1]).
    """
    if strategy not in STRATEGIES:
        raise LocateError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    sims = np.atleast_2d(np.asarray(sims, dtype=np.float64))
    lat = np.atleast_2d(np.asarray(lat, dtype=np.float64))
    lon = np.atleast_2d(np.asarray(lon, dtype=np.float64))
    if not (sims.shape == lat.shape == lon.shape) or sims.shape[1] < 1:
        raise LocateError(f"sims, lat, lon must share a shape (n, k>=1); got {sims.shape}, {lat.shape}, {lon.shape}")
    if not radius_km > 0:
        raise LocateError(f"radius_km must be > 0, got {radius_km}")
    w = softmax_weights(sims, temperature)
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != sims.shape or not np.all(np.isfinite(prior)) or np.any(prior < 0):
            raise LocateError(f"prior must be finite factors >= 0 shaped like sims {sims.shape}; got {prior.shape}")
        if np.all(prior == 1.0):  # λ = 0: exactly the plain vote
            prior = None
    if prior is not None:
        w = w * prior
        tot = w.sum(axis=1, keepdims=True)
        w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), softmax_weights(sims, temperature))
    if strategy == "nn":
        best = np.argmax(sims if prior is None else w, axis=1)[:, None]  # ties: the first = more similar
        plat, plon = np.take_along_axis(lat, best, 1)[:, 0], np.take_along_axis(lon, best, 1)[:, 0]
    elif strategy == "weighted-mean":
        plat, plon = spherical_mean(lat, lon, w, axis=-1)
    else:
        d = haversine(lat[:, :, None], lon[:, :, None], lat[:, None, :], lon[:, None, :], check=False)  # (n, k, k)
        near = d <= radius_km
        mass = np.einsum("ncj,nj->nc", near, w)  # similarity mass around each candidate
        mass = mass + 1e-12 * w  # tie-break towards the more similar candidate
        c = np.argmax(mass, axis=1)
        members = np.take_along_axis(near, c[:, None, None], 1)[:, 0, :]  # (n, k)
        plat, plon = spherical_mean(lat, lon, w * members, axis=-1)
    dist = haversine(plat[:, None], plon[:, None], lat, lon, check=False)
    conf = np.clip((w * (dist <= radius_km)).sum(axis=1), 0.0, 1.0)
    return plat, plon, conf


# ----------------------------------------------------------------------------------------------
# neighbour search with exclusions
# ----------------------------------------------------------------------------------------------
def search_excluding(index, queries: np.ndarray, k: int, exclude_rows: Sequence[Iterable[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """kNN search that drops, per query, given gallery rows (e.g. the query itself).

    Searches ``k + max(len(excluded))`` neighbours, removes the excluded rows and keeps the
    best ``k`` of the rest, so the answer is exact (for an exact index).

    Args:
        index: a :class:`~geosolver.index.KnnIndex`.
        queries: ``(n, dim)`` float32.
        k: neighbours wanted.
        exclude_rows: per query, gallery row numbers to drop (``None``: drop nothing).

    Returns:
        ``(sims, rows)`` ``(n, k')`` as :meth:`KnnIndex.search`; missing slots have row ``-1``
        and similarity ``-inf``.
    """
    if exclude_rows is None:
        return index.search(queries, k)
    excl = [np.fromiter(e, dtype=np.int64) if e is not None else np.zeros(0, np.int64) for e in exclude_rows]
    if len(excl) != len(queries):
        raise LocateError(f"exclude list has {len(excl)} entries for {len(queries)} queries")
    extra = max((e.size for e in excl), default=0)
    k_eff = min(k, len(index))
    sims, rows = index.search(queries, k_eff + extra)
    if extra == 0:
        return sims, rows
    drop = np.zeros(rows.shape, bool)
    for i, e in enumerate(excl):
        if e.size:
            drop[i] = np.isin(rows[i], e)
    keep_order = np.argsort(drop, axis=1, kind="stable")[:, :k_eff]  # kept first, order preserved
    rows_k = np.take_along_axis(rows, keep_order, 1)
    sims_k = np.take_along_axis(sims, keep_order, 1)
    bad = np.take_along_axis(drop, keep_order, 1)
    rows_k[bad] = -1
    sims_k[bad] = -np.inf
    return sims_k, rows_k


# ----------------------------------------------------------------------------------------------
# neighbours and their vote
# ----------------------------------------------------------------------------------------------
class Vote(NamedTuple):
    """The location the neighbours of each query vote for.

    Attributes:
        lat, lon: ``(n,)`` float64, degrees.
        confidence: ``(n,)`` float64 in [0, 1]: share of the top-k softmax similarity mass within
            ``radius_km`` of the guess (see the module docstring).
    """

    lat: np.ndarray
    lon: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class Neighbours:
    """The top-k gallery neighbours of ``n`` queries, best first — what a kNN vote runs on.

    Build with :meth:`search` (a :class:`~geosolver.index.KnnIndex` search plus the gallery
    coordinates); take a vote with :meth:`vote`. A missing neighbour (an IVF index that probed
    too few vectors, or an excluded row) has row ``-1``, similarity ``-inf`` and the
    coordinates of gallery row 0 (finite, and weightless in every vote).

    Attributes:
        sims: ``(n, k)`` float32 similarities (inner products of unit vectors = cosine).
        rows: ``(n, k)`` int64 gallery row numbers.
        lat, lon: ``(n, k)`` float64 coordinates of those neighbours, degrees.
    """

    sims: np.ndarray
    rows: np.ndarray
    lat: np.ndarray
    lon: np.ndarray

    def __post_init__(self) -> None:
        shapes = {np.shape(self.sims), np.shape(self.rows), np.shape(self.lat), np.shape(self.lon)}
        if len(shapes) != 1 or np.ndim(self.sims) != 2:
            raise LocateError(
                f"Neighbours needs four (n, k) arrays; got sims {np.shape(self.sims)}, rows {np.shape(self.rows)}, "
                f"lat {np.shape(self.lat)}, lon {np.shape(self.lon)}"
            )

    @classmethod
    def of_rows(cls, sims: np.ndarray, rows: np.ndarray, g_lat: np.ndarray, g_lon: np.ndarray) -> "Neighbours":
        """Attach gallery coordinates to a search result.

        Args:
            sims: ``(n, k)`` similarities, best first (``-inf`` where missing).
            rows: ``(n, k)`` gallery row numbers (``-1`` where missing).
            g_lat, g_lon: ``(m,)`` gallery coordinates, degrees.
        """
        rows = np.asarray(rows, dtype=np.int64)
        safe = np.where(rows >= 0, rows, 0)
        g_lat, g_lon = np.asarray(g_lat, dtype=np.float64), np.asarray(g_lon, dtype=np.float64)
        return cls(np.asarray(sims, dtype=np.float32), rows, g_lat[safe], g_lon[safe])

    @classmethod
    def search(
        cls,
        index,
        queries: np.ndarray,
        k: int,
        g_lat: np.ndarray,
        g_lon: np.ndarray,
        exclude_rows: Sequence[Iterable[int]] | None = None,
    ) -> "Neighbours":
        """The ``k`` nearest gallery rows of each query (:func:`search_excluding`), with coordinates.

        Args:
            index: a :class:`~geosolver.index.KnnIndex` over the gallery.
            queries: ``(n, dim)`` L2-normalised embeddings.
            k: neighbours wanted (at most ``len(index)`` come back).
            g_lat, g_lon: ``(m,)`` gallery coordinates in degrees, indexed by the index's rows.
            exclude_rows: per query, gallery rows never to return (``None``: none).
        """
        sims, rows = search_excluding(index, queries, k, exclude_rows)
        return cls.of_rows(sims, rows, g_lat, g_lon)

    @classmethod
    def concat(cls, parts: Sequence["Neighbours"]) -> "Neighbours":
        """Stack the neighbours of consecutive query batches (narrower parts padded as missing)."""
        if not parts:
            raise LocateError("Neighbours.concat: no parts")
        k = max(p.k for p in parts)

        def pad(a: np.ndarray, fill) -> np.ndarray:
            return a if a.shape[1] == k else np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=fill)

        lat0, lon0 = parts[0].lat.flat[0] if parts[0].lat.size else 0.0, parts[0].lon.flat[0] if parts[0].lon.size else 0.0
        return cls(
            np.concatenate([pad(p.sims, -np.inf) for p in parts]),
            np.concatenate([pad(p.rows, -1) for p in parts]),
            np.concatenate([pad(p.lat, lat0) for p in parts]),
            np.concatenate([pad(p.lon, lon0) for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.sims.shape[0])

    @property
    def k(self) -> int:
        """Neighbours per query (columns)."""
        return int(self.sims.shape[1])

    @property
    def valid(self) -> np.ndarray:
        """``(n, k)`` bool: the slot holds a real neighbour."""
        return self.rows >= 0

    def head(self, k: int) -> "Neighbours":
        """The best ``k`` neighbours of each query (all of them when ``k >= self.k``)."""
        if k < 1:
            raise LocateError(f"k must be >= 1, got {k}")
        if k >= self.k:
            return self
        return Neighbours(self.sims[:, :k], self.rows[:, :k], self.lat[:, :k], self.lon[:, :k])

    def distances_km(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """``(n, k)`` great-circle km from each query's point ``(lat[i], lon[i])`` (degrees) to its neighbours."""
        return haversine(np.asarray(lat, np.float64)[:, None], np.asarray(lon, np.float64)[:, None], self.lat, self.lon, check=False)

    def vote(
        self,
        strategy: str = DEFAULT_STRATEGY,
        k: int | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        radius_km: float = DEFAULT_RADIUS_KM,
        prior: np.ndarray | None = None,
    ) -> Vote:
        """Where the (best ``k``) neighbours say each query was taken — the one kNN vote.

        Args:
            strategy: ``nn``, ``weighted-mean`` or ``densest`` (see the module docstring).
            k: vote with the best ``k`` neighbours only (``None``: all of them).
            temperature: softmax temperature on similarities.
            radius_km: neighbourhood radius (km) for ``densest`` and for the confidence.
            prior: ``(n, self.k)`` vote factors (the text prior, :mod:`geosolver.prior`), cut
                to the best ``k`` with the neighbours; ``None``: the plain vote.

        Returns:
            :class:`Vote` of ``(n,)`` arrays: lat, lon (degrees), confidence ([0, 1]).
        """
        nb = self if k is None else self.head(k)
        if prior is not None:
            prior = np.asarray(prior)[:, : nb.k]
        return Vote(*aggregate(nb.sims, nb.lat, nb.lon, strategy, temperature, radius_km, prior))


# ----------------------------------------------------------------------------------------------
# predictions
# ----------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Where one photo was (probably) taken.

    Attributes:
        lat, lon: the guess, degrees.
        confidence: share of the top-k softmax similarity mass within ``radius_km`` of the guess
            ([0, 1]; see the module docstring).
        neighbours: the top-k gallery items, best first: ``id``, ``lat``, ``lon`` (degrees),
            ``similarity`` (cosine), ``distance_km`` (to the guess).
        country: ISO 3166-1 alpha-2 code of the guess (nearest populated place), or ``""``.
        strategy, k: how the guess was made.
        text_prior: with a text prior (:mod:`geosolver.prior`), the zero-shot model's most
            probable countries (or regions), best first: ``{"group", "name", "probability"}``;
            empty without one.
    """

    lat: float
    lon: float
    confidence: float
    neighbours: list[dict] = field(default_factory=list)
    country: str = ""
    strategy: str = ""
    k: int = 0
    text_prior: list[dict] = field(default_factory=list)

    @property
    def osm_url(self) -> str:
        """OpenStreetMap link centred on the guess, with a marker."""
        return osm_url(self.lat, self.lon)

    def to_dict(self) -> dict:
        """JSON-ready dict (includes ``osm_url``)."""
        d = asdict(self)
        d["osm_url"] = self.osm_url
        return d


def osm_url(lat: float, lon: float) -> str:
    """OpenStreetMap link centred on a point (degrees), with a marker."""
    return f"https://www.openstreetmap.org/?mlat={lat:.5f}&mlon={lon:.5f}#map=6/{lat:.5f}/{lon:.5f}"


def _neighbour_ids(meta_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.where(rows >= 0, meta_ids[np.clip(rows, 0, None)], None)


class Geolocator:
    """An encoder, a gallery store and a kNN index over it.

    Build with :meth:`from_store`; call :meth:`locate` for images, :meth:`locate_embeddings`
    for precomputed embeddings.

    Args:
        gallery: the gallery store (embeddings + ``lat``/``lon`` in degrees per row).
        index: a :class:`~geosolver.index.KnnIndex` over ``gallery``.
        encoder: a loaded encoder, or ``None`` to load the one named in the gallery manifest on
            first use (on ``device``).
        device: where that lazily loaded encoder runs (``None``: ``"auto"``).
    """

    def __init__(self, gallery: EmbeddingStore, index, encoder: "Encoder | None" = None, device: str | None = None):
        self.gallery = gallery
        self.index = index
        self._encoder = encoder
        self._device = device
        lat, lon = gallery.coords()
        self._lat, self._lon = lat, lon
        self._ids = gallery.metadata["id"].astype(str).to_numpy(dtype=object)
        self._rows_of_id: dict[str, list[int]] | None = None
        self._default_prior: TextPrior | None = None

    @classmethod
    def from_store(
        cls,
        gallery: EmbeddingStore | str | os.PathLike,
        encoder: "Encoder | EncoderSpec | str | os.PathLike | None" = None,
        index_kind: str = "flat",
        index: Any = None,
        device: str | None = None,
        **index_params: Any,
    ) -> "Geolocator":
        """Open a gallery for geolocation.

        Args:
            gallery: the gallery store (or its path): embeddings + ``lat``/``lon`` per row.
            encoder: ``None`` (load the encoder named in the gallery manifest when images are
                first located), an encoder name / path or an
                :class:`~geosolver.encoders.EncoderSpec` (loaded now with
                :func:`geosolver.encoders.load_encoder`), or a loaded
                :class:`~geosolver.encoders.Encoder`.
            index_kind: ``flat`` / ``ivf`` / ``ivfpq`` (see :mod:`geosolver.index`).
            index: a ready :class:`~geosolver.index.KnnIndex` over ``gallery`` (overrides kind).
            device: where an encoder loaded here runs (``"auto"``, ``"cpu"``, ``"cuda:1"`` ...;
                overrides an ``EncoderSpec``'s device; ``None``: the spec's, else ``"auto"``).
                Not allowed with an already loaded encoder.
            **index_params: passed to :func:`geosolver.index.index_for_store`.

        Raises:
            LocateError: the gallery is empty, the encoder is not the gallery's, or ``device``
                was given with a loaded encoder.
        """
        store = gallery if isinstance(gallery, EmbeddingStore) else EmbeddingStore(gallery)
        if len(store) == 0:
            raise LocateError(f"gallery {store.path} is empty: nothing to retrieve from")
        if encoder is not None:
            encoder = _resolve_encoder(encoder, device)
            _check_encoder(encoder, store)
        if index is None:
            index = index_for_store(store, kind=index_kind, **index_params)
        elif index.dim != store.dim or len(index) != len(store):
            raise LocateError(f"index ({len(index)} rows, dim {index.dim}) does not match gallery {store.path} ({len(store)} rows, dim {store.dim})")
        return cls(store, index, encoder, device=device)

    @property
    def encoder(self) -> "Encoder":
        """The encoder (loaded from the gallery manifest's name on first use)."""
        if self._encoder is None:
            name = self.gallery.encoder.get("name")
            if not name:
                raise LocateError(f"gallery {self.gallery.path} names no encoder; pass encoder= (--model on the command line)")
            self._encoder = _load_encoder(_encoder_source(name, self._device))
            _check_encoder(self._encoder, self.gallery)
        return self._encoder

    def rows_of_ids(self, ids: Iterable[Any]) -> list[int]:
        """Gallery row numbers whose ``id`` is one of ``ids``."""
        if self._rows_of_id is None:
            m: dict[str, list[int]] = {}
            for r, i in enumerate(self._ids):
                m.setdefault(i, []).append(r)
            self._rows_of_id = m
        out: list[int] = []
        for i in ids:
            out.extend(self._rows_of_id.get(str(i), ()))
        return out

    def _exclusions(self, exclude_ids, n: int) -> list[list[int]] | None:
        if exclude_ids is None:
            return None
        if len(exclude_ids) != n:
            raise LocateError(f"exclude_ids has {len(exclude_ids)} entries for {n} inputs")
        out = []
        for e in exclude_ids:
            if e is None:
                out.append([])
            elif isinstance(e, (str, bytes, int, np.integer)):
                out.append(self.rows_of_ids([e]))
            else:
                out.append(self.rows_of_ids(e))
        return out

    def neighbours(self, emb: np.ndarray, k: int, exclude_ids: Sequence[Any] | None = None) -> Neighbours:
        """The top-k gallery neighbours of embeddings, excluding per-query gallery ids.

        Args:
            emb: ``(n, dim)`` L2-normalised embeddings.
            k: neighbours wanted (at most the gallery size).
            exclude_ids: per query, a gallery id (or ids) never to return (``None``: none).

        Returns:
            :class:`Neighbours` ``(n, k')`` with gallery coordinates (degrees).
        """
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self.gallery.dim:
            raise LocateError(f"embeddings must have shape (n, {self.gallery.dim}) for gallery {self.gallery.path}; got {emb.shape}")
        if k < 1:
            raise LocateError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(emb, np.float32)
        return Neighbours.search(self.index, queries, k, self._lat, self._lon, self._exclusions(exclude_ids, emb.shape[0]))

    def locate_embeddings(
        self,
        emb: np.ndarray,
        k: int = DEFAULT_K,
        strategy: str = DEFAULT_STRATEGY,
        temperature: float = DEFAULT_TEMPERATURE,
        radius_km: float = DEFAULT_RADIUS_KM,
        exclude_ids: Sequence[Any] | None = None,
        batch_size: int = 4096,
        with_country: bool = True,
        prior: LocationPrior | str | None = None,
    ) -> list[Prediction]:
        """Locate precomputed embeddings.

        Args:
            emb: ``(n, dim)`` L2-normalised embeddings from the gallery's encoder.
            k: neighbours that vote.
            strategy: ``nn``, ``weighted-mean`` or ``densest``.
            temperature, radius_km: see :meth:`Neighbours.vote` (radius in km).
            exclude_ids: per input, a gallery id (or ids) never to return (leave-one-out).
            batch_size: queries per search batch.
            with_country: reverse-geocode each guess.
            prior: a :class:`~geosolver.prior.LocationPrior` — the text prior (:meth:`text_prior`)
                or a location head (:func:`geosolver.heads.load_head`) — or ``"text"`` for
                :meth:`text_prior` with its defaults: each neighbour's vote is multiplied by the
                prior's probability of its place (see :mod:`geosolver.prior`). ``None`` or
                ``"none"``: the plain vote.

        Returns:
            One :class:`Prediction` per row of ``emb``.
        """
        emb = np.asarray(emb)
        if emb.ndim == 1:
            emb = emb[None, :]
        if strategy not in STRATEGIES:
            raise LocateError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        excl_all = None if exclude_ids is None else list(exclude_ids)
        if excl_all is not None and len(excl_all) != emb.shape[0]:
            raise LocateError(f"exclude_ids has {len(excl_all)} entries for {emb.shape[0]} inputs")
        prior = self._prior(prior)
        preds: list[Prediction] = []
        for s in range(0, emb.shape[0], batch_size):
            nb = self.neighbours(emb[s : s + batch_size], k, None if excl_all is None else excl_all[s : s + batch_size])
            factors, text_top = None, [[] for _ in range(len(nb))]
            if prior is not None:
                factors = vote_factors(prior, emb[s : s + batch_size], nb.lat, nb.lon)
            if isinstance(prior, TextPrior):
                text_top = prior.top_groups(*prior.group_probs(emb[s : s + batch_size]))
            v = nb.vote(strategy, temperature=temperature, radius_km=radius_km, prior=factors)
            cc = country_of(v.lat, v.lon) if with_country else np.full(len(v.lat), "", dtype=object)
            dist = nb.distances_km(v.lat, v.lon)
            ids = _neighbour_ids(self._ids, nb.rows)
            valid = nb.valid
            for i in range(len(v.lat)):
                neighbours = [
                    {"id": ids[i, j], "lat": float(nb.lat[i, j]), "lon": float(nb.lon[i, j]), "similarity": float(nb.sims[i, j]), "distance_km": float(dist[i, j])}
                    for j in range(nb.k)
                    if valid[i, j]
                ]
                preds.append(
                    Prediction(float(v.lat[i]), float(v.lon[i]), float(v.confidence[i]), neighbours, str(cc[i]), strategy, int(k), text_top[i])
                )
        return preds

    def text_prior(
        self, by: str = "country", weight: float | None = None, temperature: float | None = None, template: str | None = None
    ) -> TextPrior:
        """The text prior of this gallery's encoder (a CLIP with a text tower), for ``prior=``.

        Args:
            by: ``"country"`` (zero-shot over countries) or ``"region"`` (over first-level regions).
            weight: λ, the prior's exponent (``None``: :data:`~geosolver.prior.DEFAULT_PRIOR_WEIGHT`).
            temperature: zero-shot softmax temperature (``None``: the CLIP's own logit scale).
            template: prompt template (``None``: the StreetCLIP form for the level).

        Raises:
            geosolver.errors.ZeroShotError: the encoder has no text tower.
        """
        level = TEXT_GROUPING[check_grouping(by)]["level"]
        zs = ZeroShot(self.encoder, level=level, template=template, temperature=temperature)
        return TextPrior(zs, by=by, weight=DEFAULT_PRIOR_WEIGHT if weight is None else weight)

    def _prior(self, prior: LocationPrior | str | None) -> LocationPrior | None:
        if prior is None or (isinstance(prior, str) and prior == "none"):
            return None
        if isinstance(prior, str):
            if prior != "text":
                raise LocateError(f"unknown prior {prior!r}; use 'none' or 'text'")
            if self._default_prior is None:
                self._default_prior = self.text_prior()
            return self._default_prior
        return prior

    def embed(self, inputs: Sequence[Any], batch_size: int = 32, tta: str | None = None) -> np.ndarray:
        """Embed image sources (paths, ``zip://`` sources, bytes, PIL images) with the encoder.

        Raises:
            geosolver.images.ImageReadError: an input cannot be decoded (names it).
        """
        images = [x if isinstance(x, Image.Image) else open_image(x) for x in inputs]
        emb = np.asarray(self.encoder.embed_images(images, batch_size=batch_size, tta=tta), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.gallery.dim:
            raise LocateError(f"encoder produced embeddings of shape {emb.shape}; gallery {self.gallery.path} has dim {self.gallery.dim}")
        return emb

    def locate(
        self,
        inputs: Sequence[Any] | Any,
        k: int = DEFAULT_K,
        strategy: str = DEFAULT_STRATEGY,
        tta: str | None = None,
        exclude_ids: Sequence[Any] | None = None,
        batch_size: int = 32,
        **kw: Any,
    ) -> list[Prediction]:
        """Locate photos.

        Args:
            inputs: an image source or a list of them (paths, ``zip://ARCHIVE::MEMBER``, bytes,
                PIL images).
            k, strategy, exclude_ids: see :meth:`locate_embeddings`.
            tta: test-time augmentation of the encoder (``None``, ``"flip"``, ``"d4"``).
            batch_size: images per encoder batch.
            **kw: ``temperature``, ``radius_km``, ``with_country``, ``prior``.

        Returns:
            One :class:`Prediction` per input, in order.
        """
        if isinstance(inputs, (str, bytes, os.PathLike, Image.Image)):
            inputs = [inputs]
        emb = self.embed(list(inputs), batch_size=batch_size, tta=tta)
        return self.locate_embeddings(emb, k=k, strategy=strategy, exclude_ids=exclude_ids, **kw)


def _encoder_source(name: str, device: str | None) -> "str | EncoderSpec":
    """What :func:`_load_encoder` loads: the name itself, or a spec pinning the device."""
    if device is None:
        return name
    return EncoderSpec(name, device=str(device))


def _resolve_encoder(encoder: "Encoder | EncoderSpec | str | os.PathLike", device: str | None) -> "Encoder":
    """A loaded encoder from a name / path, an ``EncoderSpec`` (loaded on ``device`` if given) or an encoder."""
    if isinstance(encoder, (str, os.PathLike)):
        return _load_encoder(_encoder_source(os.fspath(encoder), device))
    if isinstance(encoder, EncoderSpec):
        return _load_encoder(encoder if device is None else encoder.on(device=device))
    if device is not None:
        raise LocateError(f"device={device!r} applies to an encoder loaded here; got an already loaded encoder ({encoder!r}): move it yourself or pass its name / EncoderSpec")
    return encoder


def _load_encoder(source: "str | EncoderSpec") -> "Encoder":
    return load_encoder(source)


def _check_encoder(encoder: "Encoder", store: EmbeddingStore) -> None:
    ok, why = encoder_compatible(encoder.identity(), store.encoder)
    if not ok:
        raise LocateError(f"gallery {store.path} was embedded with another encoder ({why}); embed it again with this encoder or pick that one")
