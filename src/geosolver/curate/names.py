"""Curation's option values, pandas-free: what ``geosolver curate``'s parser needs (``--by``
default, ``--strategy`` choices) without loading the curation modules."""

from __future__ import annotations

#: the feature columns a gallery is grouped by when ``--by`` is not given.
DEFAULT_FEATURES: tuple[str, ...] = ("cell", "land_cover", "climate", "soil")
#: the selection strategies (see :mod:`geosolver.curate`).
STRATEGIES: tuple[str, ...] = ("grouped-clustered", "grouped", "cell", "random")
