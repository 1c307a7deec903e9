"""Add geographic metadata derived from coordinates to an EmbeddingStore, offline.

Columns (see :func:`geosolver.geodata.point_features`):

* ``country`` — ISO 3166-1 alpha-2 code of the nearest GeoNames place;
* ``climate`` — Köppen–Geiger class name (``"Cfb"``, ``"BWh"``, …, ``"Ocean"``);
* ``land_cover`` — MODIS IGBP class name (``"croplands"``, ``"urban and built-up"``, …);
* ``land`` — bool, on land per the 1 km GLOBE-derived mask;
* ``cell`` — lon/lat grid cell label of ``cell_size`` degrees (``geo.grid_cell_label``).

Soil type cannot be derived offline and is not added. Columns a shard already has (e.g.
OSV5M's own ``land_cover`` and ``climate``) are kept unless ``overwrite`` is set. Each shard's
parquet is rewritten atomically, and the enrichment is recorded in ``manifest["enriched"]``.
A run killed half-way is completed by running it again.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import pandas as pd

from geosolver.errors import EnrichError
from geosolver.geodata import FEATURES, point_features
from geosolver.progress import tqdm
from geosolver.store import EmbeddingStore, rewrite_metadata


def parse_features(spec: str | Sequence[str]) -> list[str]:
    """``"country,climate"`` or a list → validated list of feature names (order kept, no repeats)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for f in (s.strip() for s in items):
        if not f:
            continue
        if f not in FEATURES:
            raise EnrichError(f"unknown feature {f!r}; choose from {','.join(FEATURES)}")
        if f not in out:
            out.append(f)
    if not out:
        raise EnrichError(f"no features given; choose from {','.join(FEATURES)}")
    return out


def enrich_store(
    path: str | os.PathLike,
    features: str | Sequence[str] = FEATURES,
    cell_size: float = 2.0,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Add derived geographic columns to every shard's metadata.

    Args:
        path: an EmbeddingStore directory.
        features: names from ``country, climate, land_cover, land, cell`` (list or comma string).
        cell_size: side of the ``cell`` grid cells, degrees.
        overwrite: recompute columns that already exist instead of keeping them.
        progress: show a per-shard tqdm bar.

    Returns:
        The columns written into at least one shard (in feature order); columns that every
        shard already had are not listed.
    """
    feats = parse_features(features)
    if not (0 < cell_size <= 180):
        raise EnrichError(f"cell size must be in (0, 180] degrees, got {cell_size}")

    added: list[str] = []
    bar = tqdm(total=len(EmbeddingStore(path).shards), desc="enrich", unit="shard", disable=not progress)

    def fn(meta: pd.DataFrame, shard: str) -> pd.DataFrame:
        bar.update(1)
        todo = [f for f in feats if overwrite or f not in meta.columns]
        if not todo:
            return meta
        cols = point_features(meta["lat"].to_numpy(), meta["lon"].to_numpy(), todo, cell_size)
        for f in todo:
            meta[f] = cols[f]
            if f not in added:
                added.append(f)
        return meta

    entry = {
        "features": feats,
        "cell_size": float(cell_size),
        "overwrite": bool(overwrite),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "added": added,  # filled in by fn before rewrite_metadata writes the entry
    }
    try:
        rewrite_metadata(path, fn, log_entry=entry, log_key="enriched")
    finally:
        bar.close()
    return [f for f in feats if f in added]
