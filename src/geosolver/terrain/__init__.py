"""The terrain world (see :mod:`geosolver.terrain.world`): ``run(TerrainConfig(...)) -> TerrainWorld``.

:mod:`.config` holds the settings and their choices without numpy or pandas (``geosolver terrain
build``'s parser is derived from it); everything else — sampling, rendering, :func:`run` — lives in
:mod:`.world` and is imported from there on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from geosolver.terrain.config import GALLERY_SOURCES, QUERY_DISTRIBUTIONS, SETTLEMENT_KM, SPLITS, TerrainConfig

__all__ = ["GALLERY_SOURCES", "QUERY_DISTRIBUTIONS", "SETTLEMENT_KM", "SPLITS", "TerrainConfig", "TerrainWorld",
           "build_world", "render_tiles", "run", "sample_area", "sample_mp16", "sample_points"]


def __getattr__(name: str) -> Any:
    """The names of :mod:`geosolver.terrain.world` (it imports numpy, pandas and the rasters' readers)."""
    world = importlib.import_module("geosolver.terrain.world")
    try:
        return getattr(world, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
