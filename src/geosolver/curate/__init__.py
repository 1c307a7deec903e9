"""Gallery curation: a small gallery that still represents the whole planet.

A kNN geolocator is only as good as its gallery, and a multi-million-image gallery is heavy.
This module picks a subset of an :class:`~geosolver.store.EmbeddingStore` that balances global
coverage (every group of similar places gets its turn) with local diversity (inside a large
group, the picks come from different embedding clusters).

Pipeline of :func:`select` with the default ``grouped-clustered`` strategy:

1. **Groups.** Rows are grouped by the chosen feature columns (default ``cell``, ``land_cover``,
   ``climate``, ``soil``; absent columns are skipped with a notice, NaN values form their own
   group value ``"<missing>"``). Grouping is one ``pd.factorize`` per column and a mixed-radix
   combination of the codes -- no Python loop over rows.
2. **Rounds needed.** Round-robin gives every group one image per round while it lasts, so
   after ``R`` rounds ``f(R) = sum_g min(size_g, R)`` images are taken. The number of rounds is
   the smallest ``R`` with ``f(R) >= N`` (binary search over the group sizes). Rounds
   ``0 .. R-2`` are taken whole; the last round only for the first groups in group order. That
   fixes how many images ``c_g`` each group contributes *before* any embedding is read.
3. **Order inside a group** only matters for groups that are not taken whole (``c_g < size_g``).
   Of those, groups larger than ``cluster_threshold`` (default 20) are clustered: their
   embeddings (a random candidate pool of at most ``max(pool_min, pool_per_pick * c_g)`` rows,
   capped at ``pool_max``, gathered from the store's memmap for that group only) are split by
   spherical k-means (``faiss.Kmeans(spherical=True)``) into
   ``k = min(ceil(sqrt(size_g)), c_g, max_clusters)`` clusters. ``k`` never exceeds the number
   of images the group will give, so each pick comes from a different cluster where possible.
   Inside the group the order is round-robin over clusters -- the largest cluster first, then
   always the cluster whose centre is farthest from the centres already visited, so the first
   picks span the group's embedding space even when k-means splits a dense mode -- and inside
   a cluster nearest to the centre (highest cosine) first. Other groups are ordered at random.
4. **Selection.** A row's *round* is its rank inside its group; the chosen rows are the first
   ``N`` after sorting by ``(round, group position)`` where group positions are a seeded
   permutation. The result lists rows in that selection order.

Alternative strategies share the interface: ``grouped`` (same groups, random order inside),
``cell`` (groups are ``cell_size`` degree lon/lat grid cells computed from the coordinates,
random inside) and ``random`` (uniform sample without replacement).

Everything is deterministic for a given ``seed``.
"""

import importlib
from typing import Any

from geosolver.curate.names import DEFAULT_FEATURES, STRATEGIES

#: pandas-free above: ``geosolver curate --help`` imports this package for its choices. Everything
#: else (pandas, the store) is imported on first use: public name → the module defining it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("MISSING", "SIZE_BINS", "CurationError", "format_histogram", "group_codes", "group_size_histogram",
                     "group_table", "present_features"), "groups"),
    **dict.fromkeys(("coverage", "curate_store", "entropy_bits", "format_coverage", "nearest_km", "plot_map",
                     "random_land_points"), "report"),
    **dict.fromkeys(("COVERAGE_CELL_DEG", "CurationResult", "cluster_order", "contributions", "farthest_first", "n_clusters",
                     "ranks_from_keys", "round_robin", "rounds_needed", "select"), "sampling"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = [
    "COVERAGE_CELL_DEG", "DEFAULT_FEATURES", "MISSING", "SIZE_BINS", "STRATEGIES", "CurationError", "CurationResult",
    "cluster_order", "contributions", "coverage", "curate_store", "entropy_bits", "farthest_first", "format_coverage",
    "format_histogram", "group_codes", "group_size_histogram", "group_table", "n_clusters", "nearest_km", "plot_map",
    "present_features", "random_land_points", "ranks_from_keys", "round_robin", "rounds_needed", "select",
]
