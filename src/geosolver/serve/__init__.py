"""``geosolver serve``: a web page to drop a photo on and see the guess on a map, plus a JSON API.

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart). See :mod:`geosolver.serve.app`.
"""

from geosolver.serve.app import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_DECODES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_TIMEOUT,
    PhotoError,
    ServeError,
    create_app,
    decode_photo,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_DECODES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_READ_TIMEOUT",
    "PhotoError",
    "ServeError",
    "create_app",
    "decode_photo",
]
