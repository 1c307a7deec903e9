"""The web app: a page to drop a photo on and see the guess on a map, and its JSON API.

Routes:

* ``GET /`` — the page (plain HTML/JS/CSS under ``static/``; Leaflet vendored, no CDN).
* ``POST /api/locate`` — multipart upload (field ``file``) or a raw image body; ``k`` and
  ``strategy`` as query or form parameters. Answers the :class:`~geosolver.locate.Prediction`
  (``lat``, ``lon``, ``confidence``, ``country``, ``neighbours``, ``osm_url``, ...) plus ``place``
  (nearest populated place of the guess), ``image`` (upright size, format) and ``truth``
  (``{lat, lon, km, geoscore, place}`` when the photo carries EXIF GPS, else ``null``).
* ``GET /api/health`` — the model and gallery loaded, gallery size, limits.
* ``GET /api/gallery/points`` — a subsample of the gallery's coordinates (map overlay).
* Play mode (a GeoGuessr duel against the model; only with ``play=QUERIES``, i.e. ``geosolver serve
  --play QUERIES``, else these answer 404 with a detail saying so; see :mod:`geosolver.serve.play`):

  * ``GET /api/play`` — whether play mode is on (``enabled``), query count, round TTL, k/strategy.
  * ``GET /api/round`` — a new round: ``{token, photo_url, expires_in}`` (never the coordinates);
    query photos that cannot be read are logged and skipped, 503 if none can.
  * ``GET /api/round/{token}/photo`` — the round's photo re-encoded as JPEG with no EXIF or other
    metadata (EXIF GPS would leak the answer), at most 1600 px on the long side, decoded within
    the pixel budget below.
  * ``POST /api/round/{token}/guess`` — ``lat``, ``lon`` (JSON body or urlencoded form): answers
    ``{truth: {lat, lon, place}, player: {lat, lon, km, geoscore}, model: {lat, lon, km, geoscore,
    ...}, round}``. The model's guess comes from the query's stored embedding with the query's own
    id excluded from the gallery (leave-one-out). A token is single use (409 on a second guess),
    expires after ``round_ttl`` seconds (410), unknown tokens get 404; bad lat/lon 422, a body over
    4 KB 413. At most ``max_rounds`` tokens are kept (oldest forgotten first).

* ``GET /docs``, ``GET /openapi.json`` — FastAPI's API docs (the docs page loads Swagger UI from a
  CDN; the JSON works offline).

Robustness: the body is read in chunks and refused (413) as soon as it passes the size limit;
non-images (415), unsupported formats (415), truncated or undecodable images (422) and
decompression bombs (422, checked from the header before decoding) get a clear one-line
``detail``; bad ``k``/``strategy`` get 422. The body must arrive within ``read_timeout`` seconds
(408 otherwise) and a client that disconnects mid-upload costs one log line.

Memory: a small file can declare a huge image (a 0.5 MB PNG of 13000x13000 px decodes to 0.5 GB of
RGB, several times that while converting). So the server has its own pixel budget, ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS`, far below the global guard :data:`geosolver.images.MAX_PIXELS`),
checked from the header against the pixels that would actually be decoded (JPEGs count at their
draft-reduced size), at most ``max_decodes`` photos are decoded at once, and the full-size image is
dropped as soon as the model-sized pixels exist. Decoding and preprocessing run in the threadpool
(JPEGs decoded reduced to the encoder's ``min_side``, as the embedding pipeline does); the model runs in
one worker thread (:class:`~geosolver.serve.worker.ModelWorker`), so the event loop stays free
and concurrent requests are micro-batched. Uploads are kept in memory and never written to disk
unless ``save_uploads`` is set.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import math
import logging
import os
import threading
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from geosolver.errors import GeosolverError, ServeError, PhotoError
from geosolver.files import atomic_write_bytes, atomic_write_json, jsonable, version
from geosolver.geo import geoscore, haversine
from geosolver.images import MAX_PIXELS, ImageReadError, exif_gps, open_image
from geosolver.locate import DEFAULT_K, DEFAULT_STRATEGY, STRATEGIES, Geolocator
from geosolver.places import nearest_place
from geosolver.rundir import RunDir
from geosolver.serve.play import DEFAULT_MAX_ROUNDS, DEFAULT_ROUND_TTL, Play, add_play_routes, open_play
from geosolver.serve.upload import Upload, UploadError, read_upload
from geosolver.serve.worker import ModelWorker

if TYPE_CHECKING:
    from geosolver.encoders import Encoder, EncoderSpec
    from geosolver.locate import Prediction
    from geosolver.store import EmbeddingStore

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
#: Image formats the app accepts (PIL format names; MPO is what many phone cameras write).
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}

#: Most pixels the server decodes for one photo (JPEGs: counted at their draft-reduced size).
#: 40 Mpx lets through every ordinary photo (12-24 Mpx phones and cameras, 33 Mpx 8K frames, and
#: 48-100 Mpx camera JPEGs, which decode at 1/8 scale for a 224 px model) while capping one decode
#: at ~120 MB of RGB (~0.5 GB at the peak of an RGBA->RGB conversion), against ~0.5 GB / ~2 GB for
#: a 169 Mpx image just under the global guard.
DEFAULT_MAX_PIXELS = 40_000_000
#: Most photos decoded at the same time (each decode may hold up to ``max_pixels`` of image).
DEFAULT_MAX_DECODES = 2
#: Seconds a request body may take to arrive before the server answers 408.
DEFAULT_READ_TIMEOUT = 30.0
#: Decoded images at least this large trigger a ``gc.collect()`` once they are dropped.
_GC_PIXELS = 4_000_000


@dataclass
class Photo:
    """A decoded upload.

    Attributes:
        image: upright RGB image (possibly reduced by JPEG draft decoding, see ``min_side``);
            ``None`` once the app has dropped it after preprocessing.
        format: PIL format name (``JPEG``, ``PNG``, ``WEBP`` ...).
        gps: EXIF GPS ``(lat, lon)`` in degrees, or ``None``.
        width, height: the photo's full upright size in pixels.
    """

    image: Image.Image | None
    format: str
    gps: tuple[float, float] | None
    width: int
    height: int


def decode_photo(
    data: bytes, name: str = "upload", min_side: int | None = None, max_pixels: int | None = None, fit_long_side: int | None = None,
) -> Photo:
    """Check and decode an uploaded photo.

    The header is read first (format, declared size) so that unsupported formats and
    decompression bombs are refused before any pixel is decoded.

    Args:
        data: the encoded bytes.
        name: how to call the upload in messages (the client's file name).
        min_side: JPEGs may be decoded reduced while keeping the shorter side at least this many
            pixels (the encoder's ``min_side``: the same decoding the embedding pipeline uses).
        max_pixels: most pixels to decode (the server's budget, checked from the header against
            the size that would be decoded: a JPEG's draft-reduced size); ``None``: only the global
            :data:`~geosolver.images.MAX_PIXELS` guard.
        fit_long_side: instead of ``min_side``: the photo will be shown at most this many pixels
            on its long side, so JPEGs may be decoded reduced as far as that allows (the shorter
            side is derived from the header's aspect ratio).

    Returns:
        The :class:`Photo` (image turned upright by its EXIF orientation).

    Raises:
        PhotoError: 400 empty; 415 not an image / unsupported format; 422 decompression bomb,
            truncated or undecodable data.
    """
    if not data:
        raise PhotoError(400, f"{name}: the upload is empty (0 bytes)")
    probe = _open_header(data, name)
    fmt = str(probe.format or "")
    if fmt not in ALLOWED_FORMATS:
        raise PhotoError(415, f"{name}: image format {fmt or 'unknown'} is not accepted (send JPEG, PNG or WebP)")
    w, h = probe.size
    if fit_long_side and min_side is None and max(w, h) > fit_long_side and min(w, h) > 0:
        min_side = max(1, math.ceil(fit_long_side * min(w, h) / max(w, h)))
    _check_pixels(probe, fmt, name, min_side, max_pixels)
    try:
        gps = exif_gps(probe)
        orientation = int(probe.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not lose the photo
        gps, orientation = None, 1
    try:
        img = open_image(data, min_side=min_side)
    except ImageReadError as e:
        raise PhotoError(422, f"{name}: the image data is truncated or corrupt ({e})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w  # turned by 90 degrees (open_image applied the EXIF orientation)
    return Photo(img, fmt, gps, w, h)


def _open_header(data: bytes, name: str) -> Image.Image:
    """The photo opened lazily (header only): 415 not an image, 422 bomb or unreadable header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise PhotoError(415, f"{name}: not an image format Geosolver can read (send JPEG, PNG or WebP)") from None
    except Image.DecompressionBombError as e:
        raise PhotoError(422, f"{name}: refused as a possible decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoError(422, f"{name}: cannot read the image header: {type(e).__name__}: {e}") from None


def _check_pixels(probe: Image.Image, fmt: str, name: str, min_side: int | None, max_pixels: int | None) -> None:
    """422 when the header declares more pixels than the global guard, or than ``max_pixels`` at
    the size that would be decoded (a JPEG's draft-reduced size; ``probe.draft`` is applied)."""
    limit = MAX_PIXELS  # not PIL's global, which other libraries may switch off
    w, h = probe.size
    if limit and w * h > limit:
        raise PhotoError(422, f"{name}: refused as a possible decompression bomb: it declares {w}x{h} = {w * h} pixels, more than the limit of {limit}")
    if not max_pixels:
        return
    dw, dh = _decoded_size(probe, fmt, min_side)
    if dw * dh > max_pixels:
        decoded = "" if (dw, dh) == (w, h) else f" (decoded reduced: {dw}x{dh} = {dw * dh:,})"
        raise PhotoError(
            422,
            f"{name}: {w}x{h} = {w * h:,} pixels{decoded} is more than this server's limit of {max_pixels:,} pixels "
            f"(geosolver serve --max-pixels); refused before decoding as a possible decompression bomb: send a smaller photo",
        )


def _decoded_size(probe: Image.Image, fmt: str, min_side: int | None) -> tuple[int, int]:
    """The size ``open_image`` will decode: a JPEG reduced by draft mode (header only), else the full size."""
    w, h = probe.size
    if min_side and fmt == "JPEG":  # the same reduction open_image will apply
        scale = max(1, min(w, h) // int(min_side))
        if scale >= 2:
            try:
                probe.draft("RGB", (max(1, w // scale), max(1, h // scale)))
                return probe.size
            except Exception:  # count the full size
                return w, h
    return w, h


def _truth(pred_lat: float, pred_lon: float, gps: tuple[float, float] | None) -> dict | None:
    if gps is None:
        return None
    lat, lon = gps
    km = float(haversine(lat, lon, pred_lat, pred_lon))
    return {"lat": lat, "lon": lon, "km": km, "geoscore": float(geoscore(km)), "place": nearest_place(lat, lon)}


# ------------------------------------------------------------------------------------------------
# the app: checked options, shared state, create_app
# ------------------------------------------------------------------------------------------------
@dataclass
class ServeOptions:
    """The app's options (see :func:`create_app`), checked when built.

    Raises:
        ServeError: a bad value.
    """

    max_upload_mb: float = 20.0
    default_k: int = DEFAULT_K
    default_strategy: str = DEFAULT_STRATEGY
    max_k: int = 100
    max_batch: int = 8
    gallery_points: int = 3000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decodes: int = DEFAULT_MAX_DECODES
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise ServeError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if not 1 <= self.default_k <= self.max_k:
            raise ServeError(f"default k must be in [1, {self.max_k}], got {self.default_k}")
        if self.default_strategy not in STRATEGIES:
            raise ServeError(f"unknown strategy {self.default_strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not self.max_batch >= 1:
            raise ServeError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.max_pixels >= 1:
            raise ServeError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if not self.max_decodes >= 1:
            raise ServeError(f"max_decodes must be >= 1, got {self.max_decodes}")
        if not self.read_timeout > 0:
            raise ServeError(f"read_timeout must be > 0 seconds, got {self.read_timeout}")
        self.max_pixels, self.max_decodes, self.read_timeout = int(self.max_pixels), int(self.max_decodes), float(self.read_timeout)

    @property
    def max_bytes(self) -> int:
        """Largest photo accepted, in bytes."""
        return int(self.max_upload_mb * 1e6)


@dataclass
class AppState:
    """What the routes share (``app.state.serve``).

    Attributes:
        geolocator: the geolocator served; ``encoder`` and ``gallery`` are its encoder (loaded at
            start-up) and gallery, ``min_side`` the encoder's (JPEGs are decoded reduced to it).
        options: the checked options.
        settings: the options as recorded (``app.state.settings``; ``config.json`` of ``save_dir``).
        worker: the model worker thread (micro-batches concurrent photos).
        decode_slots: at most ``options.max_decodes`` photos decoded at once.
        save_dir: where uploads and answers are kept, or ``None``.
        play: the play mode's query set and round book, or ``None`` (play mode off).
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


def create_app(
    geolocator: Geolocator,
    *,
    max_upload_mb: float = 20.0,
    default_k: int = DEFAULT_K,
    default_strategy: str = DEFAULT_STRATEGY,
    max_k: int = 100,
    max_batch: int = 8,
    save_uploads: str | os.PathLike | None = None,
    gallery_points: int = 3000,
    warmup: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decodes: int = DEFAULT_MAX_DECODES,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    play: "str | os.PathLike | EmbeddingStore | None" = None,
    round_ttl: float = DEFAULT_ROUND_TTL,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the FastAPI app around a ready :class:`~geosolver.locate.Geolocator`.

    Args:
        geolocator: the geolocator (gallery + index + encoder).
        max_upload_mb: largest photo accepted, in MB (10^6 bytes); larger uploads get 413.
        default_k: neighbours that vote when a request names no ``k``.
        default_strategy: aggregation when a request names no ``strategy``.
        max_k: largest ``k`` a request may ask for.
        max_batch: most concurrent requests embedded in one forward pass.
        save_uploads: directory to keep each upload and its answer in (``None``: keep nothing);
            its ``config.json`` records the app's settings.
        gallery_points: most gallery coordinates ``/api/gallery/points`` returns.
        warmup: run one blank image through the model now, so the first photo is not slow.
        max_pixels: most pixels decoded for one photo (checked from the header; JPEGs count at
            their draft-reduced size); more gets 422 before any pixel is decoded.
        max_decodes: most photos decoded (and preprocessed) at the same time.
        read_timeout: seconds the request body may take to arrive; slower uploads get 408.
        play: query embedding store (same encoder as the gallery; rows with ``lat``/``lon`` and an
            image ``source``) for play mode, a duel against the model; ``None``: play mode off.
        round_ttl: seconds a play round's token stays valid (410 after).
        max_rounds: most outstanding play tokens kept (the oldest is forgotten first).
        clock: monotonic seconds for the round book (tests inject one to expire tokens).

    Returns:
        The ``fastapi.FastAPI`` app (serve it with uvicorn).

    Raises:
        ServeError: bad settings.
    """
    options = ServeOptions(
        max_upload_mb=max_upload_mb, default_k=default_k, default_strategy=default_strategy, max_k=max_k, max_batch=max_batch,
        gallery_points=gallery_points, max_pixels=max_pixels, max_decodes=max_decodes, read_timeout=read_timeout,
    )
    play_state = None
    if play is not None:
        play_state = open_play(play, geolocator.encoder.identity(), round_ttl=round_ttl, max_rounds=max_rounds, clock=clock)
    state = _start(geolocator, options, save_uploads, play_state)
    if warmup:
        _warm_up(state)
    app = FastAPI(
        title="Geosolver",
        description="Where was this photo taken? Retrieval over a geotagged gallery of image embeddings.",
        version=version(),
        lifespan=_lifespan,
    )
    app.state.serve = state
    app.state.worker, app.state.geolocator, app.state.settings = state.worker, geolocator, state.settings
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(GeosolverError, _geosolver_error)
    _add_routes(app, options)
    return app


def _start(geolocator: Geolocator, options: ServeOptions, save_uploads: str | os.PathLike | None, play: Play | None = None) -> AppState:
    """Load the encoder, record the settings (in ``save_uploads`` too) and start the model worker."""
    encoder = geolocator.encoder  # loaded now: a bad model fails at start-up, not on the first photo
    gallery = geolocator.gallery
    save_dir = Path(save_uploads) if save_uploads else None
    settings = {
        "gallery": str(gallery.path),
        "gallery_size": len(gallery),
        "model": encoder.name,
        "max_upload_mb": options.max_upload_mb,
        "default_k": options.default_k,
        "default_strategy": options.default_strategy,
        "max_k": options.max_k,
        "max_batch": options.max_batch,
        "max_pixels": options.max_pixels,
        "max_decodes": options.max_decodes,
        "read_timeout_s": options.read_timeout,
        "save_uploads": str(save_dir) if save_dir else None,
        "play": None if play is None else {"queries": str(play.queries.path), "playable": len(play), "round_ttl_s": play.book.ttl},
    }
    if save_dir is not None:
        RunDir(save_dir, "serve").write_config(settings)
    worker = ModelWorker(geolocator, max_batch=options.max_batch)
    return AppState(
        geolocator=geolocator, encoder=encoder, gallery=gallery, min_side=encoder.min_side, options=options, settings=settings,
        worker=worker, decode_slots=threading.BoundedSemaphore(options.max_decodes), save_dir=save_dir, play=play,
    )


def _warm_up(state: AppState) -> None:
    """One blank photo through model, index and reverse geocoder (their first calls are slow)."""
    blank = state.encoder.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
    p = state.worker.submit(blank, 1, state.options.default_strategy).result()
    nearest_place(p.lat, p.lon)


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
    ) -> dict:
        return await _locate(request, k, strategy)

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
        "defaults": {"k": o.default_k, "strategy": o.default_strategy},
        "strategies": list(STRATEGIES),
        "max_k": o.max_k,
        "max_upload_bytes": o.max_bytes,
        "max_pixels": o.max_pixels,
        "max_decodes": o.max_decodes,
        "read_timeout_s": o.read_timeout,
        "saves_uploads": state.save_dir is not None,
        "play": state.play is not None,
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
    k_eff, strategy_eff = _resolve_params(k, strategy, up.fields, o.default_k, o.default_strategy, o.max_k)
    photo, pixels = await _decode(state, up)
    t1 = time.perf_counter()
    pred = await asyncio.wrap_future(state.worker.submit(pixels, k_eff, strategy_eff))
    t2 = time.perf_counter()
    out = _answer(pred, photo, up, read_decode_s=t1 - t0, model_s=t2 - t1)
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


async def _decode(state: AppState, up: Upload) -> tuple[Photo, np.ndarray]:
    """Decode + preprocess in the threadpool: 4xx :class:`HTTPException` for a bad photo."""
    try:
        return await run_in_threadpool(_prepare, state, up.data, up.filename or "upload")
    except PhotoError as e:
        raise HTTPException(e.status, e.message) from None


def _prepare(state: AppState, data: bytes, name: str) -> tuple[Photo, np.ndarray]:
    """Decode + preprocess (in the threadpool, outside the model worker), at most
    ``max_decodes`` at a time; the decoded image is dropped before returning."""
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
    return photo, pixels


def _answer(pred: Prediction, photo: Photo, up: Upload, read_decode_s: float, model_s: float) -> dict:
    """The JSON answer: the prediction plus ``place``, ``truth``, ``image`` and ``timing_ms``."""
    out = pred.to_dict()
    out["place"] = nearest_place(pred.lat, pred.lon)
    out["truth"] = _truth(pred.lat, pred.lon, photo.gps)
    out["image"] = {"filename": up.filename, "format": photo.format, "width": photo.width, "height": photo.height, "bytes": len(up.data)}
    out["timing_ms"] = {"read_decode": round(read_decode_s * 1e3, 1), "model": round(model_s * 1e3, 1)}
    return jsonable(out)


def _malloc_trim():
    """glibc's ``malloc_trim`` (``None`` elsewhere)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory_if_large(width: int, height: int) -> None:
    """After dropping a decoded image of ``width`` × ``height``: hand its memory back to the OS when
    it was large (at least ``_GC_PIXELS``; see :func:`_release_memory`)."""
    if width * height >= _GC_PIXELS:
        _release_memory()


def _release_memory() -> None:
    """Hand a large decoded image's memory back to the OS.

    Freeing is not enough: each threadpool thread allocates from its own glibc malloc arena and
    the freed blocks stay in those arenas (measured: four 36 Mpx uploads left the server ~1.4 GB
    larger). ``malloc_trim(0)`` releases the free pages of every arena.
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted (binds to ``host``; loopback by default)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the app is reachable from other machines (it has no authentication)", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
