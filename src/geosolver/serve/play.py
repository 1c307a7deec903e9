"""Play mode of the web app: a GeoGuessr duel against the model (``geosolver serve --play QUERIES``).

A round is one photo drawn from a query embedding store (rows with true ``lat``/``lon`` and an
image ``source``: a file, ``zip://ARCHIVE::MEMBER`` or a tar member, read through
:func:`geosolver.images.read_bytes`). The player sees the photo only -- re-encoded as a JPEG with
no EXIF or other metadata (EXIF GPS would give the answer away), at most
:data:`~geosolver.serve.photo.MAX_PHOTO_SIDE` pixels on the long side -- clicks a guess on the map, and is scored against
the model, whose guess is computed from the query store's *stored* embedding (no encoder forward):
``Geolocator.locate_embeddings(emb[None], k, strategy, exclude_ids=[query_id])``. The query's own
id is excluded, so a query that is also a gallery photo is not found as its own twin
(leave-one-out): the model plays the photo as if it had never seen it. ``/api/locate`` is not
leave-one-out, so a query store that is the gallery, or shares ids or photo sources with it, is
refused at start-up (a player could upload the round's photo and get its exact place) unless
``allow_gallery_queries`` is set.

The photo is read with the server's byte cap (``max_upload_mb``: a 12 MB zip holding a 12 GiB
member is refused from the member's declared size, and no read goes past the cap) and re-encoded
differently on every showing (:func:`~geosolver.serve.photo.render_photo`), so its hash does not
identify it.

Routes (added to the app by :func:`add_play_routes`; without ``--play`` they answer 404):

* ``GET /api/round`` -> ``{"token", "photo_url", "expires_in"}``: never the coordinates.
* ``GET /api/round/{token}/photo`` -> the photo (``image/jpeg``, no metadata).
* ``POST /api/round/{token}/guess`` with ``lat``, ``lon`` (JSON body or urlencoded form) ->
  ``{"truth": {lat, lon, place}, "player": {lat, lon, km, geoscore}, "model": {lat, lon, km,
  geoscore, confidence, country}, "round": {...}}``.

Tokens (``secrets.token_urlsafe``) are single use (a second guess: 409), expire after
``round_ttl`` seconds (410), unknown ones get 404. Memory stays bounded whatever clients do, and
one client cannot take another's open round away: each client address keeps at most
``rounds_per_client`` rounds (its own oldest is forgotten first), and when all clients together
hold ``max_rounds``, the oldest round of the client holding the most is forgotten.

This module knows the app only through ``request.app.state.serve`` (duck-typed): the app imports
it, never the other way round.
"""

from __future__ import annotations

import io
import asyncio
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from geosolver.errors import HTTPInputError, ImageReadError, PhotoError, ServeError, StoreError
from geosolver.geo import geoscore, haversine
from geosolver.images import describe_source, read_bytes
from geosolver.places import nearest_place
from geosolver.serve.options import DEFAULT_MAX_ROUNDS, DEFAULT_ROUND_TTL
from geosolver.serve.photo import render_photo
from geosolver.store import EmbeddingStore, encoder_compatible

log = logging.getLogger(__name__)

#: Rounds whose rendered photo is kept in memory (the page asks for it right after the round).
PHOTO_CACHE = 16
#: Photos tried per ``GET /api/round`` before giving up (unreadable ones are skipped).
MAX_DRAWS = 20
#: Largest guess body accepted, in bytes.
MAX_GUESS_BYTES = 4096
#: How long an expired or used token is remembered (as a multiple of the TTL) to answer 410/409
#: rather than 404.
_FORGET_AFTER_TTLS = 2.0

NO_PLAY = "play mode is off: start the server with `geosolver serve --gallery G --play QUERIES`"


# ------------------------------------------------------------------------------------------------
# the round book: tokens, single use, expiry, bounded
# ------------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One issued round: the query row it shows, when it was issued, whether it was played."""

    row: int
    issued: float
    client: str = ""
    used: bool = False


class RoundBook:
    """Outstanding round tokens, bounded and thread safe.

    Args:
        ttl: seconds a token stays valid.
        max_rounds: most tokens kept in all; past it, the oldest round of the client holding the
            most rounds is forgotten.
        rounds_per_client: most tokens kept per client; past it, that client's own oldest is
            forgotten.
        clock: seconds, monotonic (injected by tests to expire tokens without sleeping).
    """

    def __init__(self, ttl: float = DEFAULT_ROUND_TTL, max_rounds: int = DEFAULT_MAX_ROUNDS, clock: Callable[[], float] = time.monotonic,
                 rounds_per_client: int | None = None):
        if not ttl > 0:
            raise ServeError(f"round_ttl must be > 0 seconds, got {ttl}")
        if not max_rounds >= 1:
            raise ServeError(f"max_rounds must be >= 1, got {max_rounds}")
        self.ttl, self.max_rounds, self.clock = float(ttl), int(max_rounds), clock
        self.rounds_per_client = int(rounds_per_client or max_rounds)
        self._rounds: OrderedDict[str, Round] = OrderedDict()
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rounds)

    def issue(self, row: int, client: str = "") -> str:
        """A new token for query ``row``, issued to ``client`` (its address)."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            now = self.clock()
            self._prune(now)
            self._rounds[token] = Round(int(row), now, client)
            mine = self._by_client.setdefault(client, OrderedDict())
            mine[token] = None
            if len(mine) > self.rounds_per_client:
                self._forget(next(iter(mine)))
            if len(self._rounds) > self.max_rounds:
                heaviest = max(self._by_client.values(), key=len)
                self._forget(next(iter(heaviest)))
        return token

    def _forget(self, token: str) -> None:
        r = self._rounds.pop(token)
        mine = self._by_client[r.client]
        del mine[token]
        if not mine:
            del self._by_client[r.client]

    def peek(self, token: str) -> int:
        """The row of a live token (not expired; played or not).

        Raises:
            HTTPInputError: 404 unknown, 410 expired.
        """
        with self._lock:
            return self._get(token, self.clock()).row

    def take(self, token: str) -> int:
        """Use a token up: its row.

        Raises:
            HTTPInputError: 404 unknown, 410 expired, 409 already played.
        """
        with self._lock:
            r = self._get(token, self.clock())
            if r.used:
                raise HTTPInputError(409, "this round was already played: each round takes one guess (GET /api/round for a new one)")
            r.used = True
            return r.row

    def _get(self, token: str, now: float) -> Round:
        r = self._rounds.get(token)
        if r is None:
            raise HTTPInputError(404, "unknown round token (it may be too old, or from a restarted server): GET /api/round for a new one")
        if now - r.issued > self.ttl:
            raise HTTPInputError(410, f"this round expired ({self.ttl:g} s to guess, geosolver serve --round-ttl): GET /api/round for a new one")
        return r

    def _prune(self, now: float) -> None:
        """Forget tokens far past their expiry (tokens are in issue order)."""
        horizon = self.ttl * _FORGET_AFTER_TTLS
        while self._rounds:
            token, r = next(iter(self._rounds.items()))
            if now - r.issued <= horizon:
                break
            self._forget(token)


# ------------------------------------------------------------------------------------------------
# the query set and the game state
# ------------------------------------------------------------------------------------------------
@dataclass
class Play:
    """What the play routes share (``app.state.serve.play``).

    Attributes:
        queries: the query store; ``ids``, ``sources``, ``lat``, ``lon`` its playable rows' columns
            (``rows`` their row numbers in the store).
        book: the outstanding round tokens.
    """

    queries: EmbeddingStore
    rows: np.ndarray
    ids: np.ndarray
    sources: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    book: RoundBook
    bad: set = field(default_factory=set)
    photos: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(64)))
    played: int = 0

    def __len__(self) -> int:
        return len(self.rows)


def check_queries(queries: "str | EmbeddingStore", encoder_identity: dict) -> "EmbeddingStore":
    """The query store, opened and checked against the served encoder (the check
    :class:`~geosolver.locate.Geolocator` makes for the gallery: :func:`~geosolver.store.encoder_compatible`).

    Raises:
        ServeError: missing or unreadable store, or embedded with another encoder (one line).
    """
    if isinstance(queries, EmbeddingStore):
        store = queries
    else:
        if not Path(queries).exists():
            raise ServeError(f"--play {queries}: no such query store")
        try:
            store = EmbeddingStore(queries)
        except StoreError as e:
            raise ServeError(f"--play {queries}: {e}") from None
    ok, why = encoder_compatible(encoder_identity, store.encoder)
    if not ok:
        raise ServeError(f"--play {store.path}: the query store was embedded with another encoder than the served one ({why}); "
                         "embed the queries with the gallery's encoder")
    return store


def _metadata(store: "EmbeddingStore") -> pd.DataFrame:
    """The query store's metadata, or a one-line :class:`ServeError`."""
    try:
        return store.metadata
    except (OSError, ValueError, StoreError) as e:  # a damaged shard .parquet (store.metadata says which)
        raise ServeError(f"--play {store.path}: the query store's metadata cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def check_not_gallery(queries: "EmbeddingStore", gallery: "EmbeddingStore") -> None:
    """Refuse a query store that is the gallery or shares photo ids or sources with it.

    ``/api/locate`` searches the whole gallery (it is not leave-one-out), so a player who uploads a
    round's photo would get the gallery twin's exact place back.

    Raises:
        ServeError: one line, naming how many rows overlap and ``--allow-gallery-queries``.
    """
    hint = ("/api/locate would find each such round's photo in the gallery and answer it exactly; use a held-out query store "
            "(or pass --allow-gallery-queries to serve it anyway)")
    if Path(queries.path).resolve() == Path(gallery.path).resolve():
        raise ServeError(f"--play {queries.path}: the query store is the gallery: {hint}")
    qm, gm = _metadata(queries), gallery.metadata
    shared = np.isin(qm["id"].astype(str).to_numpy(), gm["id"].astype(str).to_numpy())
    what = "ids"
    if not shared.any() and "source" in qm.columns and "source" in gm.columns:
        shared = np.isin(qm["source"].astype(str).to_numpy(), gm["source"].dropna().astype(str).to_numpy())
        what = "photo sources"
    if shared.any():
        raise ServeError(f"--play {queries.path}: {int(shared.sum())} of {len(qm)} queries share {what} with the gallery "
                         f"(e.g. {qm['id'].astype(str).to_numpy()[shared][0]!r}): {hint}")


def open_play(queries: "str | EmbeddingStore", encoder_identity: dict, gallery: "EmbeddingStore | None" = None, *,
              round_ttl: float = DEFAULT_ROUND_TTL, max_rounds: int = DEFAULT_MAX_ROUNDS, rounds_per_client: int | None = None,
              allow_gallery_queries: bool = False, clock: Callable[[], float] = time.monotonic) -> Play:
    """Open the query store for play mode and check it.

    Args:
        queries: the query store (or its path): ``source`` + ``lat``/``lon`` per row.
        encoder_identity: the served encoder's identity (its embeddings must be comparable).
        gallery: the served gallery (checked by :func:`check_not_gallery` unless
            ``allow_gallery_queries``).
        round_ttl, max_rounds, rounds_per_client, clock: see :class:`RoundBook`.

    Raises:
        ServeError: missing / unreadable store, another encoder, the gallery's photos, no
            ``source`` column, no row with valid coordinates.
    """
    book = RoundBook(round_ttl, max_rounds, clock, rounds_per_client)
    store = check_queries(queries, encoder_identity)
    meta = _metadata(store)
    if "source" not in meta.columns:
        raise ServeError(f"--play {store.path}: the query store has no `source` column: the photos cannot be shown")
    if gallery is not None and not allow_gallery_queries:
        check_not_gallery(store, gallery)
    try:  # a damaged metadata file: coordinates that are not numbers are not playable (like NaN)
        lat = pd.to_numeric(meta["lat"], errors="coerce").to_numpy(np.float64)
        lon = pd.to_numeric(meta["lon"], errors="coerce").to_numpy(np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise ServeError(f"--play {store.path}: the query store's lat/lon columns are unreadable ({type(e).__name__}: {e})") from None
    src = meta["source"]
    ok_rows = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180) & src.notna().to_numpy() & (src.astype(str).str.len() > 0).to_numpy()
    rows = np.flatnonzero(ok_rows)
    if rows.size == 0:
        raise ServeError(f"--play {store.path}: no query row has both valid coordinates and a photo source")
    return Play(
        queries=store, rows=rows, ids=meta["id"].astype(str).to_numpy(dtype=object)[rows], sources=src.astype(str).to_numpy(dtype=object)[rows],
        lat=lat[rows], lon=lon[rows], book=book,
    )


# ------------------------------------------------------------------------------------------------
# the photo: read within the byte cap, decoded within the pixel budget, re-encoded per showing
# ------------------------------------------------------------------------------------------------
def _photo_of(state, i: int) -> bytes:
    """Read and render playable row ``i`` (in the threadpool), at most ``max_decodes`` at a time."""
    play, o = state.play, state.options
    source = play.sources[i]
    with state.decode_slots:
        data = read_bytes(source, max_bytes=o.max_bytes)
        return render_photo(data, describe_source(source), o.max_pixels)


def _draw(state, client: str) -> tuple[str, int]:
    """Issue a round: draw a readable photo (unreadable ones are logged and never drawn again)."""
    play = state.play
    for _ in range(MAX_DRAWS):
        with play.lock:
            free = len(play) - len(play.bad)
            if free <= 0:
                break
            i = int(play.rng.integers(len(play)))
            while i in play.bad:  # rejection sampling; the readable share is > 0
                i = int(play.rng.integers(len(play)))
        try:
            jpeg = _photo_of(state, i)
        except (ImageReadError, PhotoError, OSError) as e:
            msg = e.message if isinstance(e, PhotoError) else str(e)
            log.warning("play: skipping query %s: its photo cannot be shown: %s", play.ids[i], msg)
            with play.lock:
                play.bad.add(i)
            continue
        token = play.book.issue(i, client)
        with play.lock:
            play.photos[token] = jpeg
            while len(play.photos) > PHOTO_CACHE:
                play.photos.popitem(last=False)
        return token, i
    n_bad = len(play.bad)
    raise HTTPInputError(503, f"no playable photo: {n_bad} of {len(play)} query photos could not be read (see the server log)")


# ------------------------------------------------------------------------------------------------
# the guess
# ------------------------------------------------------------------------------------------------
def parse_coordinate(raw, name: str, limit: float) -> float:
    """A finite number in ``[-limit, limit]``, else 422 with one line."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise HTTPInputError(422, f"{name} is missing: send lat and lon in degrees (JSON body or form)")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise HTTPInputError(422, f"{name} must be a number in degrees, got {json.dumps(raw)[:40]}")
    try:
        x = float(raw)
    except OverflowError:  # an integer too large for a float (JSON 1000...0)
        x = math.inf
    except (TypeError, ValueError):
        raise HTTPInputError(422, f"{name} must be a number in degrees, got {str(raw)[:40]!r}") from None
    if not math.isfinite(x) or not -limit <= x <= limit:
        raise HTTPInputError(422, f"{name} must be a finite number in [-{limit:g}, {limit:g}] degrees, got {str(raw)[:40]}")
    return x


async def read_guess(request: Request, read_timeout: float) -> tuple[float, float]:
    """``lat``, ``lon`` from a small JSON or urlencoded body (query parameters also accepted)."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_GUESS_BYTES:
                raise HTTPInputError(413, f"guess body too large: the limit is {MAX_GUESS_BYTES} bytes")
        except ValueError:
            raise HTTPInputError(400, f"bad Content-Length header {declared[:40]!r}") from None

    async def body() -> bytes:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > MAX_GUESS_BYTES:
                raise HTTPInputError(413, f"guess body too large: the limit is {MAX_GUESS_BYTES} bytes")
        return bytes(buf)

    try:
        raw = await asyncio.wait_for(body(), read_timeout)
    except asyncio.TimeoutError:
        raise HTTPInputError(408, f"the guess did not arrive within {read_timeout:g} s") from None
    except ClientDisconnect:
        raise HTTPInputError(400, "the client disconnected while sending the guess") from None
    fields: dict = {}
    if raw.strip():
        if ctype in ("application/json", "") or ctype.endswith("+json"):
            try:
                fields = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...]]]] nested too deep
                raise HTTPInputError(400, "the guess body is not valid JSON: send {\"lat\": ..., \"lon\": ...}") from None
            if not isinstance(fields, dict):
                raise HTTPInputError(422, "the guess must be a JSON object {\"lat\": ..., \"lon\": ...}")
        elif ctype == "application/x-www-form-urlencoded":
            try:
                qs = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                raise HTTPInputError(400, "the guess form is not UTF-8") from None
            fields = {key: values[0] for key, values in qs.items()}
        else:
            raise HTTPInputError(415, f"unsupported content type {ctype!r} for a guess: send JSON {{\"lat\": ..., \"lon\": ...}} or a urlencoded form")
    for key in ("lat", "lon"):
        if fields.get(key) is None and key in request.query_params:
            fields[key] = request.query_params[key]
    return parse_coordinate(fields.get("lat"), "lat", 90.0), parse_coordinate(fields.get("lon"), "lon", 180.0)


def _model_guess(state, i: int):
    """The model's :class:`~geosolver.locate.Prediction` for playable row ``i`` (leave-one-out)."""
    play, o = state.play, state.options
    emb = play.queries.embeddings([int(play.rows[i])])
    return state.geolocator.locate_embeddings(emb, k=o.k, strategy=o.strategy, exclude_ids=[play.ids[i]])[0]


def score(truth: tuple[float, float], lat: float, lon: float) -> dict:
    """``{lat, lon, km, geoscore}`` of a guess against the truth."""
    km = float(haversine(truth[0], truth[1], lat, lon))
    return {"lat": float(lat), "lon": float(lon), "km": km, "geoscore": float(geoscore(km))}


# ------------------------------------------------------------------------------------------------
# routes
# ------------------------------------------------------------------------------------------------
def _play_state(request: Request):
    state = request.app.state.serve
    if state.play is None:
        raise HTTPException(404, NO_PLAY)
    return state


def _http(e: HTTPInputError):
    return HTTPException(e.status, e.message)


async def new_round(request: Request) -> dict:  # GET /api/round
    state = _play_state(request)
    try:
        token, _ = await run_in_threadpool(_draw, state, request.client.host if request.client else "")
    except HTTPInputError as e:
        raise _http(e) from None
    return {"token": token, "photo_url": f"/api/round/{token}/photo", "expires_in": state.play.book.ttl}


async def round_photo(request: Request, token: str):  # GET /api/round/{token}/photo
    state = _play_state(request)
    play = state.play
    try:
        i = play.book.peek(token)
    except HTTPInputError as e:
        raise _http(e) from None
    with play.lock:
        jpeg = play.photos.get(token)
    if jpeg is None:
        try:
            jpeg = await run_in_threadpool(_photo_of, state, i)
        except (ImageReadError, PhotoError, OSError) as e:
            log.warning("play: the photo of query %s cannot be shown any more: %s", play.ids[i], e)
            raise _http(HTTPInputError(503, "this round's photo cannot be read any more: GET /api/round for a new one")) from None
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})


async def guess(request: Request, token: str) -> dict:  # POST /api/round/{token}/guess
    state = _play_state(request)
    play = state.play
    try:
        play.book.peek(token)  # 404 / 410 before reading the body
        lat, lon = await read_guess(request, state.options.read_timeout)
        i = play.book.take(token)
    except HTTPInputError as e:
        raise _http(e) from None
    with play.lock:
        play.photos.pop(token, None)
        play.played += 1
    truth = (float(play.lat[i]), float(play.lon[i]))
    pred = await run_in_threadpool(_model_guess, state, i)
    model = score(truth, pred.lat, pred.lon)
    model.update(confidence=float(pred.confidence), country=pred.country)
    return {
        "truth": {"lat": truth[0], "lon": truth[1], "place": await run_in_threadpool(nearest_place, *truth)},
        "player": score(truth, lat, lon),
        "model": model,
        "round": {"k": state.options.k, "strategy": state.options.strategy, "leave_one_out": True, "played": play.played},
    }


async def play_info(request: Request) -> dict:  # GET /api/play
    state = request.app.state.serve
    play = state.play
    if play is None:
        return {"enabled": False, "detail": NO_PLAY}
    return {"enabled": True, "queries": len(play), "round_ttl_s": play.book.ttl, "max_rounds": play.book.max_rounds,
            "rounds_per_client": play.book.rounds_per_client,
            "k": state.options.k, "strategy": state.options.strategy}


_GUESS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object", "required": ["lat", "lon"],
                    "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "required": ["lat", "lon"], "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}}
            },
        },
    }
}


def add_play_routes(app: FastAPI) -> None:
    """Mount the play routes (they answer 404 while the app has no query store)."""
    app.add_api_route("/api/play", play_info, methods=["GET"], summary="Whether play mode is on, and its settings")
    app.add_api_route("/api/round", new_round, methods=["GET"], summary="Play: a new round (a token and its photo URL)",
                      responses={404: {"description": "play mode is off"}, 503: {"description": "no query photo can be read"}})
    app.add_api_route("/api/round/{token}/photo", round_photo, methods=["GET"], summary="Play: the round's photo (JPEG, no metadata)",
                      response_class=_jpeg_response(), responses={404: {"description": "unknown token"}, 410: {"description": "expired"}})
    app.add_api_route(
        "/api/round/{token}/guess", guess, methods=["POST"], summary="Play: guess where the round's photo was taken",
        openapi_extra=_GUESS_BODY,
        responses={404: {"description": "unknown token or play mode off"}, 409: {"description": "round already played"},
                   410: {"description": "round expired"}, 413: {"description": "body too large"}, 422: {"description": "bad lat/lon"}},
    )


def _jpeg_response():
    class JPEGResponse(Response):
        media_type = "image/jpeg"

    return JPEGResponse
