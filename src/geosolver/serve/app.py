"""The web app: a page to drop a photo on and see the guess on a map, and its JSON API.

Routes:

* ``GET /`` — the page (plain HTML/JS/CSS under ``static/``; Leaflet vendored, no CDN).
* ``POST /api/locate`` — multipart upload (field ``file``) or a raw image body; ``k`` and
  ``strategy`` as query or form parameters. Answers the :class:`~geosolver.locate.Prediction`
  (``lat``, ``lon``, ``confidence``, ``country``, ``neighbours``, ``osm_url``, ...) plus ``place``
  (nearest populated place of the guess), ``image`` (upright size, format) and ``truth``
  (``{lat, lon, km, geoscore, place}`` when the photo carries EXIF GPS, else ``null``).
  With ``head=DIR`` (``--head``) also ``head``: the location head's most probable cells with their
  probabilities and boxes, and its own guess (:mod:`geosolver.serve.headmap`); with ``fuse`` the
  vote itself is fused with the head.
* ``GET /api/health`` — the model and gallery loaded, gallery size, limits.
* ``GET /api/gallery/points`` — a subsample of the gallery's coordinates (map overlay).
* Play mode (a GeoGuessr duel against the model; only with ``play=QUERIES``, i.e. ``geosolver serve
  --play QUERIES``, else these answer 404 with a detail saying so; see :mod:`geosolver.serve.play`):

  * ``GET /api/play`` — whether play mode is on (``enabled``), query count, round TTL, k/strategy.
  * ``GET /api/round`` — a new round: ``{token, photo_url, expires_in}`` (never the coordinates);
    query photos that cannot be read are logged and skipped, 503 if none can.
  * ``GET /api/round/{token}/photo`` — the round's photo re-encoded as JPEG with no EXIF or other
    metadata (EXIF GPS would leak the answer), at most 1600 px on the long side, different bytes
    on every showing, read within the byte cap and decoded within the pixel budget.
  * ``POST /api/round/{token}/guess`` — ``lat``, ``lon`` (JSON body or urlencoded form): answers
    ``{truth: {lat, lon, place}, player: {lat, lon, km, geoscore}, model: {lat, lon, km, geoscore,
    ...}, round}``. The model's guess comes from the query's stored embedding with the query's own
    id excluded from the gallery (leave-one-out). A token is single use (409 on a second guess),
    expires after ``round_ttl`` seconds (410), unknown tokens get 404; bad lat/lon 422, a body over
    4 KB 413. At most ``rounds_per_client`` tokens are kept per client and ``max_rounds`` in all
    (see :class:`~geosolver.serve.play.RoundBook`).

* ``GET /docs``, ``GET /openapi.json`` — FastAPI's API docs (the docs page loads Swagger UI from a
  CDN; the JSON works offline).

Robustness: the body is read in chunks and refused (413) as soon as it passes the size limit;
non-images (415), unsupported formats (415), truncated or undecodable images (422) and
decompression bombs (422, checked from the header before decoding) get a clear one-line
``detail``; bad ``k``/``strategy`` get 422. The body must arrive within ``read_timeout`` seconds
(408 otherwise) and a client that disconnects mid-upload costs one log line.

Memory and decoding: see :mod:`geosolver.serve.photo` (one decode path, through
:mod:`geosolver.images`, within the server's pixel budget); at most ``max_decodes`` photos are
decoded at once and the full-size image is dropped as soon as the model-sized pixels exist.
Decoding and preprocessing run in the threadpool; the model, the search and the reverse geocoder
run in one worker thread (:class:`~geosolver.serve.worker.ModelWorker`), so the event loop stays
free and concurrent requests are micro-batched. Uploads are kept in memory and never written to
disk unless ``save_uploads`` is set.

Hostile clients: see :mod:`geosolver.serve.guard` (connection cap, header deadline, Host check,
rate-limited logging), applied by :func:`serve` and :func:`create_app`.

Options: one :class:`~geosolver.serve.options.ServeOptions` (the command line is derived from it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from geosolver.errors import GeosolverError, PhotoError
from geosolver.files import atomic_write_bytes, atomic_write_json, jsonable, version
from geosolver.geo import geoscore, haversine
from geosolver.locate import STRATEGIES, Geolocator
from geosolver.places import nearest_place
from geosolver.rundir import RunDir
from geosolver.serve.guard import HostCheck, allowed_hosts, fd_budget, guarded_protocol, limit_logs
from geosolver.serve.headmap import HeadMap, open_head
from geosolver.serve.options import ServeOptions
from geosolver.serve.photo import Photo, decode_photo, release_memory_if_large
from geosolver.serve.play import Play, add_play_routes, open_play
from geosolver.serve.upload import Upload, UploadError, read_upload
from geosolver.serve.worker import Answer, ModelWorker

if TYPE_CHECKING:
    from geosolver.encoders import EncoderSpec

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def _truth(pred_lat: float, pred_lon: float, gps: tuple[float, float] | None, place: dict | None) -> dict | None:
    """The EXIF GPS spot scored against the guess (``place``: its nearest populated place, looked up in the threadpool)."""
    if gps is None:
        return None
    lat, lon = gps
    km = float(haversine(lat, lon, pred_lat, pred_lon))
    return {"lat": lat, "lon": lon, "km": km, "geoscore": float(geoscore(km)), "place": place}


# ------------------------------------------------------------------------------------------------
# the app: shared state, create_app
# ------------------------------------------------------------------------------------------------
@dataclass
class AppState:
    """What the routes share (``app.state.serve``).

    Attributes:
        geolocator: the geolocator served; ``encoder`` and ``gallery`` are its encoder (loaded at
            start-up) and gallery, ``min_side`` the encoder's (JPEGs are decoded reduced to it).
        options: the checked options; settings: what they record (plus the gallery and model).
        settings: the options as recorded (``app.state.settings``; ``config.json`` of ``save_dir``).
        worker: the model worker thread (micro-batches concurrent photos).
        decode_slots: at most ``options.max_decodes`` photos decoded at once.
        save_dir: where uploads and answers are kept, or ``None``.
        play: the play mode's query set and round book, or ``None`` (play mode off).
        headmap: the served location head, or ``None`` (no ``--head``).
    """

    geolocator: Geolocator
    encoder: Encoder
    gallery: EmbeddingStore
    min_side: int | None
    options: ServeOptions
    settings: dict
    worker: ModelWorker
    decode_slots: threading.BoundedSemaphore
    save_dir: Path | None
    play: Play | None = None
    headmap: HeadMap | None = None


def create_app(geolocator: Geolocator, options: ServeOptions | None = None, *, clock: Callable[[], float] = time.monotonic, **changes: Any) -> FastAPI:
    """Build the FastAPI app around a ready :class:`~geosolver.locate.Geolocator`.

    Args:
        geolocator: the geolocator (gallery + index + encoder).
        options: the :class:`~geosolver.serve.options.ServeOptions` (default: all defaults).
        clock: monotonic seconds for the Play round book (tests inject one to expire tokens).
        **changes: :class:`ServeOptions` fields to change (``create_app(geo, k=3, max_pixels=...)``).

    Returns:
        The ``fastapi.FastAPI`` app (serve it with :func:`serve`, or any ASGI server).

    Raises:
        ServeError: bad settings, or a bad Play query store.
        HeadError: ``head`` is not a trained head, or was trained on another encoder's embeddings.
    """
    options = replace(options or ServeOptions(), **changes) if changes else (options or ServeOptions())
    play_state = None
    if options.play is not None:
        play_state = open_play(options.play, geolocator.encoder.identity(), geolocator.gallery, round_ttl=options.round_ttl,
                               max_rounds=options.max_rounds, rounds_per_client=options.rounds_per_client,
                               allow_gallery_queries=options.allow_gallery_queries, clock=clock)
    headmap = None if options.head is None else HeadMap(open_head(options.head, geolocator.gallery), options.fuse)
    state = _start(geolocator, options, play_state, headmap)
    if options.warmup:
        _warm_up(state)
    app = FastAPI(
        title="Geosolver",
        description="Where was this photo taken? Retrieval over a geotagged gallery of image embeddings.",
        version=version(),
        lifespan=_lifespan,
    )
    app.state.serve = state
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(GeosolverError, _geosolver_error)
    hosts = allowed_hosts(options.host, options.allow_host)
    if hosts is not None:
        app.add_middleware(HostCheck, hosts=hosts)
    _add_routes(app, options)
    return app


def _start(geolocator: Geolocator, options: ServeOptions, play: Play | None = None, headmap: HeadMap | None = None) -> AppState:
    """Load the encoder, record the settings (in ``save_uploads`` too) and start the model worker."""
    encoder = geolocator.encoder  # loaded now: a bad model fails at start-up, not on the first photo
    gallery = geolocator.gallery
    save_dir = Path(options.save_uploads) if options.save_uploads else None
    settings = {"gallery": str(gallery.path), "gallery_size": len(gallery), "model": encoder.name, **options.settings()}
    if play is not None:
        settings["playable"] = len(play)
    if headmap is not None:
        settings["head"] = headmap.describe()
    if save_dir is not None:
        RunDir(save_dir, "serve").write_config(settings)
    worker = ModelWorker(geolocator, max_batch=options.max_batch, headmap=headmap)
    return AppState(
        geolocator=geolocator, encoder=encoder, gallery=gallery, min_side=encoder.min_side, options=options, settings=settings,
        worker=worker, decode_slots=threading.BoundedSemaphore(options.max_decodes), save_dir=save_dir, play=play, headmap=headmap,
    )


def _warm_up(state: AppState) -> None:
    """One blank photo through model, index and reverse geocoder (their first calls are slow)."""
    blank = state.encoder.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
    state.worker.submit(blank, 1, state.options.strategy).result()


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    app.state.serve.worker.close()


def _state(request: Request) -> AppState:
    return request.app.state.serve


# ------------------------------------------------------------------------------------------------
# routes
# ------------------------------------------------------------------------------------------------
_LOCATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty or malformed upload"},
    408: {"description": "the upload did not arrive within the read timeout"},
    413: {"description": "upload above the size limit"},
    415: {"description": "not an image, or an unsupported format"},
    422: {"description": "truncated/corrupt image, decompression bomb, missing field, bad k or strategy"},
}


def _upload_schema(max_k: int) -> dict:
    """OpenAPI request body of ``POST /api/locate`` (the endpoint reads the raw stream itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "the photo (JPEG, PNG, WebP)"},
                            "k": {"type": "integer", "minimum": 1, "maximum": max_k},
                            "strategy": {"type": "string", "enum": list(STRATEGIES)},
                        },
                    }
                },
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def _add_routes(app: FastAPI, options: ServeOptions) -> None:
    """Mount the page and the API.

    The bound on ``k`` and the default point limit are this app's options, and FastAPI validates
    and documents query parameters from an endpoint's signature: so the two endpoints that take
    them are thin signatures made here, over the module-level :func:`_locate` and
    :func:`_gallery_points`.
    """

    async def gallery_points_route(request: Request, limit: int = Query(options.gallery_points, ge=1, le=100_000)) -> dict:
        return _gallery_points(_state(request), limit)

    async def locate(
        request: Request,
        k: int | None = Query(None, ge=1, le=options.max_k, description="neighbours that vote"),
        strategy: Literal[STRATEGIES] | None = Query(None, description="how the neighbours vote"),  # type: ignore[valid-type]
    ) -> JSONResponse:
        # already JSON-ready (files.jsonable): FastAPI's own encoder would walk it again (~0.8 ms)
        return JSONResponse(await _locate(request, k, strategy))

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/api/health", health, methods=["GET"], summary="Which model and gallery are loaded")
    app.add_api_route("/api/gallery/points", gallery_points_route, methods=["GET"], summary="A subsample of the gallery's coordinates")
    app.add_api_route(
        "/api/locate", locate, methods=["POST"], summary="Where was this photo taken?",
        openapi_extra=_upload_schema(options.max_k), responses=_LOCATE_RESPONSES,
    )
    add_play_routes(app)


async def _geosolver_error(request: Request, exc: GeosolverError):  # model/gallery failures
    log.error("request failed: %s", exc)
    return JSONResponse(status_code=500, content={"detail": f"the geolocator failed: {exc}"})


# The endpoints carry no docstring: FastAPI would publish it as the operation's description.
async def index():  # GET /: the page
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def health(request: Request) -> dict:  # GET /api/health: the model, the gallery and the limits
    state = _state(request)
    encoder, gallery, o = state.encoder, state.gallery, state.options
    return {
        "status": "ok",
        "model": {
            "name": encoder.name,
            "backend": encoder.backend,
            "dim": int(gallery.dim),
            "image_size": encoder.image_size,
        },
        "gallery": {"path": str(gallery.path), "size": len(gallery), "encoder": gallery.encoder.get("name")},
        "defaults": {"k": o.k, "strategy": o.strategy},
        "strategies": list(STRATEGIES),
        "max_k": o.max_k,
        "max_upload_bytes": o.max_bytes,
        "max_pixels": o.max_pixels,
        "max_decodes": o.max_decodes,
        "read_timeout_s": o.read_timeout,
        "saves_uploads": state.save_dir is not None,
        "play": state.play is not None,
        "head": None if state.headmap is None else state.headmap.describe(),
    }


def _gallery_points(state: AppState, limit: int) -> dict:
    """``GET /api/gallery/points``: at most ``limit`` gallery coordinates (a fixed subsample)."""
    lat, lon = state.gallery.coords()
    n = len(lat)
    rows = np.arange(n) if n <= limit else np.random.default_rng(0).choice(n, limit, replace=False)
    pts = np.round(np.stack([lat[rows], lon[rows]], axis=1), 4)
    return {"total": n, "points": pts.tolist()}


async def _locate(request: Request, k: int | None, strategy: str | None) -> dict:
    """``POST /api/locate``: read the upload, decode it, vote, answer (and keep both when asked)."""
    state = _state(request)
    o = state.options
    t0 = time.perf_counter()
    up = await _read_body(request, o.max_bytes, o.read_timeout)
    k_eff, strategy_eff = _resolve_params(k, strategy, up.fields, o.k, o.strategy, o.max_k)
    photo, pixels, gps_place = await _decode(state, up)
    t1 = time.perf_counter()
    answer = await asyncio.wrap_future(state.worker.submit(pixels, k_eff, strategy_eff))
    t2 = time.perf_counter()
    out = _answer(answer, photo, gps_place, up, read_decode_s=t1 - t0, model_s=t2 - t1)
    if state.save_dir is not None:
        await run_in_threadpool(_save_upload, state.save_dir, up.data, photo.format, out)
    return out


async def _read_body(request: Request, max_bytes: int, read_timeout: float) -> Upload:
    """The upload, within ``read_timeout`` seconds: 4xx :class:`HTTPException` when it cannot be read."""
    try:
        return await asyncio.wait_for(read_upload(request.headers, request.stream(), max_bytes), read_timeout)
    except UploadError as e:
        raise HTTPException(e.status, e.message) from None
    except asyncio.TimeoutError:
        log.warning("upload from %s timed out: the body did not arrive within %g s", _client(request), read_timeout)
        raise HTTPException(
            408, f"the upload did not arrive within {read_timeout:g} s (geosolver serve --read-timeout)", headers={"Connection": "close"}
        ) from None
    except ClientDisconnect:
        log.warning("upload from %s aborted: the client disconnected before sending the whole body", _client(request))
        raise HTTPException(400, "the client disconnected during the upload") from None


async def _decode(state: AppState, up: Upload) -> tuple[Photo, np.ndarray, dict | None]:
    """Decode + preprocess in the threadpool: 4xx :class:`HTTPException` for a bad photo."""
    try:
        return await run_in_threadpool(_prepare, state, up.data, up.filename or "upload")
    except PhotoError as e:
        raise HTTPException(e.status, e.message) from None


def _prepare(state: AppState, data: bytes, name: str) -> tuple[Photo, np.ndarray, dict | None]:
    """Decode + preprocess (in the threadpool, outside the model worker), at most
    ``max_decodes`` at a time; the decoded image is dropped before returning. Also the nearest
    place of the photo's EXIF GPS spot (``None`` without one), so no lookup runs on the event loop."""
    with state.decode_slots:
        photo = decode_photo(data, name, min_side=state.min_side, max_pixels=state.options.max_pixels)
        img = photo.image
        photo.image = None
        try:
            pixels = state.encoder.preprocess(img)
        finally:
            size = img.size
            img.close()
            del img
            release_memory_if_large(*size)
    return photo, pixels, (nearest_place(*photo.gps) if photo.gps else None)


def _answer(answer: Answer, photo: Photo, gps_place: dict | None, up: Upload, read_decode_s: float, model_s: float) -> dict:
    """The JSON answer: the prediction plus ``place``, ``truth``, ``image`` and ``timing_ms``."""
    pred = answer.prediction
    out = pred.to_dict()
    out["place"] = answer.place
    if answer.head is not None:
        out["head"] = answer.head
    out["truth"] = _truth(pred.lat, pred.lon, photo.gps, gps_place)
    out["image"] = {"filename": up.filename, "format": photo.format, "width": photo.width, "height": photo.height, "bytes": len(up.data)}
    out["timing_ms"] = {"read_decode": round(read_decode_s * 1e3, 1), "model": round(model_s * 1e3, 1)}
    return jsonable(out)


def _client(request: Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else "unknown client"


def _resolve_params(k, strategy, fields: dict[str, str], default_k: int, default_strategy: str, max_k: int) -> tuple[int, str]:
    """Query parameters win over form fields; form fields are validated here (422 when bad)."""
    if k is None and fields.get("k", "").strip():
        raw = fields["k"].strip()
        try:
            k = int(raw)
        except ValueError:
            raise HTTPException(422, f"k must be an integer in [1, {max_k}], got {raw!r}") from None
        if not 1 <= k <= max_k:
            raise HTTPException(422, f"k must be an integer in [1, {max_k}], got {k}")
    if strategy is None and fields.get("strategy", "").strip():
        strategy = fields["strategy"].strip()
        if strategy not in STRATEGIES:
            raise HTTPException(422, f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return (default_k if k is None else int(k)), (strategy or default_strategy)


def _save_upload(save_dir: Path, data: bytes, fmt: str, result: dict) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    stem = f"{stamp}-{hashlib.sha1(data).hexdigest()[:10]}"
    atomic_write_bytes(save_dir / f"{stem}.{_EXT.get(fmt, 'bin')}", data)
    atomic_write_json(save_dir / f"{stem}.json", result)


def open_geolocator(
    gallery: str | os.PathLike,
    model: "str | os.PathLike | EncoderSpec | None" = None,
    device: str = "auto",
    index_kind: str = "flat",
) -> Geolocator:
    """A :class:`~geosolver.locate.Geolocator` for serving, with its encoder loaded now.

    Args:
        gallery: gallery embedding store directory.
        model: encoder name, path or :class:`~geosolver.encoders.EncoderSpec` (``None``: the
            encoder named in the gallery manifest).
        device: ``auto`` / ``cpu`` / ``cuda`` ... for the encoder.
        index_kind: ``flat`` / ``ivf`` / ``ivfpq``.
    """
    geo = Geolocator.from_store(gallery, encoder=model, index_kind=index_kind, device=device)
    geo.encoder  # load now: a bad model fails at start-up, not on the first photo
    return geo


def make_server(app: FastAPI, log_level: str = "info"):
    """A ``uvicorn.Server`` for ``app`` (from :func:`create_app`), bound to its options' ``host`` and
    ``port``, with the connection guards of :mod:`geosolver.serve.guard`; ``.run()`` serves until
    interrupted, ``should_exit = True`` stops it."""
    o: ServeOptions = app.state.serve.options
    if o.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the app is reachable from other machines (it has no authentication)", o.host)
    # The event loop waits for the GIL whenever a decode or the model holds it; at the default 5 ms
    # switch interval that wait was most of a small photo's latency (benchmarks/serve_throughput.py).
    sys.setswitchinterval(0.0005)
    config = uvicorn.Config(
        app, host=o.host, port=o.port, log_level=log_level, http=guarded_protocol(fd_budget(o.max_connections), o.header_timeout),
        timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
    )
    limit_logs()  # after uvicorn configured its loggers
    return uvicorn.Server(config)


def serve(app: FastAPI, log_level: str = "info") -> None:
    """Run ``app`` with :func:`make_server` until interrupted."""
    make_server(app, log_level).run()
