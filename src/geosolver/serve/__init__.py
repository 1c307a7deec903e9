"""``geosolver serve``: a web page to drop a photo on and see the guess on a map, plus a JSON API.

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart). Modules, leaves first (each
imports only those above it): :mod:`~geosolver.serve.options` (every option, once),
:mod:`~geosolver.serve.photo` (decoding within budgets), :mod:`~geosolver.serve.upload` (the
request body), :mod:`~geosolver.serve.worker` (the model thread), :mod:`~geosolver.serve.guard`
(hostile clients), :mod:`~geosolver.serve.play` (the duel), :mod:`~geosolver.serve.app` (the app).
"""

from geosolver.serve.app import create_app, open_geolocator, serve
from geosolver.serve.options import DEFAULT_MAX_DECODES, DEFAULT_MAX_PIXELS, DEFAULT_READ_TIMEOUT, ServeOptions
from geosolver.serve.photo import ALLOWED_FORMATS, decode_photo
from geosolver.errors import PhotoError, ServeError

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_DECODES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_READ_TIMEOUT",
    "PhotoError",
    "ServeError",
    "ServeOptions",
    "create_app",
    "decode_photo",
    "open_geolocator",
    "serve",
]
