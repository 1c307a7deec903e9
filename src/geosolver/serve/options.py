"""Every option of ``geosolver serve``, declared once.

:class:`ServeOptions` is what :func:`geosolver.serve.app.create_app` takes, what the server
records as its settings (``/api/health``, ``save_uploads/config.json``), and what the command line
is derived from (each field's ``metadata`` holds its help; ``geosolver serve --help`` lists them).
Light on purpose: no FastAPI import, so ``geosolver --help`` stays fast.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from geosolver.errors import ServeError
from geosolver.names import DEFAULT_K, DEFAULT_STRATEGY, STRATEGIES

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
#: Seconds a Play round's token stays valid.
DEFAULT_ROUND_TTL = 600.0
#: Most outstanding Play round tokens kept in all.
DEFAULT_MAX_ROUNDS = 10_000


def _opt(help: str, cli: bool = True, **argparse_kw: Any) -> dict:
    """A field's ``metadata``: its command-line help and extra ``argparse`` keywords (``type`` is
    derived from the default unless given; ``cli=False``: no command-line option)."""
    return {"help": help, "cli": cli, "argparse": argparse_kw}


@dataclass
class ServeOptions:
    """The web app's options, checked when built (``ServeError`` with one line for a bad value).

    ``play`` may also be an open :class:`~geosolver.store.EmbeddingStore` and ``head`` a loaded
    head (:func:`geosolver.heads.load_head`) (Python API).
    """

    host: str = field(default="127.0.0.1", metadata=_opt("address to bind; 127.0.0.1 is this machine only"))
    port: int = field(default=8000, metadata=_opt("TCP port, 1-65535"))
    allow_host: tuple[str, ...] = field(default=(), metadata=_opt(
        "also answer requests whose Host header names NAME (repeatable; '*': any). By default only the bound address and "
        "localhost/127.0.0.1/::1 are answered (400 otherwise), so a web page cannot reach a loopback server through DNS "
        "rebinding; binding 0.0.0.0 or :: without --allow-host answers any name", metavar="NAME", action="append"))
    k: int = field(default=DEFAULT_K, metadata=_opt("neighbours that vote when a request names no k"))
    strategy: str = field(default=DEFAULT_STRATEGY, metadata=_opt("aggregation when a request names no strategy", choices=STRATEGIES))
    max_k: int = field(default=100, metadata=_opt("largest k a request may ask for"))
    max_batch: int = field(default=8, metadata=_opt("most concurrent photos per encoder batch"))
    max_upload_mb: float = field(default=20.0, metadata=_opt(
        "largest photo accepted, MB: an upload, and a Play photo read from its file or archive member (more is refused before "
        "it is read)"))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=_opt(
        "most pixels decoded for one photo, checked from its header before decoding; JPEGs count at their reduced decode size"))
    max_decodes: int = field(default=DEFAULT_MAX_DECODES, metadata=_opt("most photos decoded at the same time"))
    read_timeout: float = field(default=DEFAULT_READ_TIMEOUT, metadata=_opt(
        "seconds a request body may take to arrive before the server answers 408", metavar="SECONDS"))
    header_timeout: float = field(default=10.0, metadata=_opt(
        "seconds a connection may take to send a request's headers before it is closed (slow-header attacks)", metavar="SECONDS"))
    max_connections: int = field(default=1000, metadata=_opt(
        "most open connections (capped below the open-file limit); at the cap, the connection waiting longest for its "
        "headers is closed to make room"))
    gallery_points: int = field(default=3000, metadata=_opt("most gallery coordinates /api/gallery/points returns"))
    save_uploads: str | None = field(default=None, metadata=_opt(
        "keep every upload and its answer in DIR", metavar="DIR"))
    play: Any = field(default=None, metadata=_opt(
        "enable Play mode, a GeoGuessr duel against the model: QUERIES is an embedding store from the gallery's encoder whose rows "
        "have true lat/lon and an image source (files, zip:// or tar members); each round shows one of its photos (re-encoded, "
        "no EXIF) and the model guesses from the stored embedding with that query's own id excluded from the gallery "
        "(leave-one-out). Default: off (the play routes answer 404)", metavar="QUERIES"))
    allow_gallery_queries: bool = field(default=False, metadata=_opt(
        "start Play even when the query store shares photo ids with the gallery, or is the gallery (refused by default: "
        "/api/locate would then find every round's photo in the gallery and answer it exactly)", action="store_true"))
    round_ttl: float = field(default=DEFAULT_ROUND_TTL, metadata=_opt("seconds a Play round stays open for a guess (410 after)", metavar="SECONDS"))
    max_rounds: int = field(default=DEFAULT_MAX_ROUNDS, metadata=_opt("most open Play rounds kept in all"))
    rounds_per_client: int = field(default=20, metadata=_opt(
        "most open Play rounds kept per client address: a client's new round forgets its own oldest, never another client's"))
    head: Any = field(default=None, metadata=_opt(
        "show a location head's probability on the map: DIR is a head trained on this gallery's encoder (geosolver head train); "
        "each /api/locate answer gets a 'head' block with its most probable cells, drawn on the page", metavar="DIR"))
    fuse: bool = field(default=False, metadata=_opt(
        "with --head: fuse the kNN vote with the head (each neighbour's vote times the head's probability of its place)",
        action="store_true"))
    warmup: bool = field(default=True, metadata=_opt("run one blank photo through the model at start-up", cli=False))

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "read_timeout", "header_timeout", "round_ttl")
        at_least_one = ("max_k", "max_batch", "max_pixels", "max_decodes", "max_connections", "gallery_points", "max_rounds", "rounds_per_client")
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ServeError(f"{name} must be a finite number > 0, got {v!r}")
            setattr(self, name, float(v))
        for name in at_least_one:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ServeError(f"{name} must be an integer >= 1, got {v!r}")
        if not 1 <= self.port <= 65535:
            raise ServeError(f"port must be in 1-65535, got {self.port}")
        if not 1 <= self.k <= self.max_k:
            raise ServeError(f"default k must be in [1, {self.max_k}], got {self.k}")
        if self.strategy not in STRATEGIES:
            raise ServeError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.allow_host = tuple(self.allow_host or ())
        if self.fuse and self.head is None:
            raise ServeError("fuse fuses the kNN vote with a location head: add head (--head DIR)")
        if self.save_uploads is not None:
            self.save_uploads = os.fspath(self.save_uploads)

    @property
    def max_bytes(self) -> int:
        """Largest photo accepted, in bytes."""
        return int(self.max_upload_mb * 1e6)

    def settings(self) -> dict:
        """The options as JSON-ready values (``play`` and ``head`` as their paths)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        play = out["play"]
        out["play"] = None if play is None else os.fspath(getattr(play, "path", play))
        out["allow_host"] = list(self.allow_host)
        head = out["head"]
        out["head"] = None if head is None else os.fspath(head.info["path"] if hasattr(head, "info") else head)
        return out


def cli_fields() -> list:
    """The fields that are command-line options, in declaration order."""
    return [f for f in fields(ServeOptions) if f.metadata.get("cli", False)]
