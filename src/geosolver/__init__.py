"""Geosolver: geolocate photos by retrieval over image embeddings.

The public API lives in the sub-modules (``geosolver.geo``, ``geosolver.encoders``,
``geosolver.data``, ``geosolver.store``, ``geosolver.embed``, ``geosolver.index``,
``geosolver.locate``, ``geosolver.evaluate``, ...). Importing this package is cheap:
nothing heavy (torch, faiss) is imported until a sub-module needs it.
"""

__version__ = "0.1.0"
