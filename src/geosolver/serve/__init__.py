"""``geosolver serve``: a web page to drop a photo on and see the guess on a map, plus a JSON API.

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart). Modules, leaves first (each
imports only those above it): :mod:`~geosolver.serve.options` (every option, once),
:mod:`~geosolver.serve.photo` (decoding within budgets), :mod:`~geosolver.serve.upload` (the
request body), :mod:`~geosolver.serve.worker` (the model thread), :mod:`~geosolver.serve.guard`
(hostile clients), :mod:`~geosolver.serve.play` (the duel), :mod:`~geosolver.serve.app` (the app).

The names below are loaded on first use, so ``geosolver serve --help`` (which reads only
:mod:`~geosolver.serve.options`) does not import FastAPI and uvicorn.
"""

from importlib import import_module

from geosolver.errors import PhotoError, ServeError

_EXPORTS = {
    "create_app": "app", "open_geolocator": "app", "serve": "app", "make_server": "app",
    "ServeOptions": "options", "DEFAULT_MAX_DECODES": "options", "DEFAULT_MAX_PIXELS": "options", "DEFAULT_READ_TIMEOUT": "options",
    "ALLOWED_FORMATS": "photo", "decode_photo": "photo",
}
__all__ = sorted([*_EXPORTS, "PhotoError", "ServeError"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"geosolver.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'geosolver.serve' has no attribute {name!r}")
