"""Validation during training: kNN Geoscore of held-out queries against a small gallery, the
similarity-distance rank correlation, and collapse diagnostics — all from in-memory embeddings.

The search is an exact :class:`~geosolver.index.KnnIndex` (``flat``) over the gallery embeddings
and the vote :meth:`geosolver.locate.Neighbours.vote` — the same search and strategies the
``locate`` and ``evaluate`` commands use; the metrics :func:`geosolver.geo.distance_metrics`, the
rank correlation :func:`geosolver.analysis.pairs.spearman_pairs` and the collapse numbers
:func:`geosolver.analysis.diagnostics.diagnostics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geosolver.analysis.diagnostics import diagnostics
from geosolver.analysis.pairs import random_pairs, spearman_pairs
from geosolver.errors import CollapseError
from geosolver.geo import distance_metrics, haversine
from geosolver.index import KnnIndex
from geosolver.locate import DEFAULT_STRATEGY, Neighbours

if TYPE_CHECKING:
    from geosolver.locate import Neighbours


def knn_neighbours(q_emb: np.ndarray, g_emb: np.ndarray, g_lat: np.ndarray, g_lon: np.ndarray, k: int = 10) -> "Neighbours":
    """The top-k gallery neighbours of each query (exact cosine search through
    :meth:`geosolver.index.KnnIndex.from_embeddings`).

    Args:
        q_emb: ``(n, d)`` L2-normalised query embeddings.
        g_emb: ``(m, d)`` L2-normalised gallery embeddings.
        g_lat, g_lon: ``(m,)`` gallery coordinates, degrees.
        k: neighbours per query (capped at ``m``).

    Returns:
        :class:`~geosolver.locate.Neighbours` ``(n, min(k, m))``.
    """
    k = max(1, min(int(k), np.shape(g_emb)[0]))

    return Neighbours.search(KnnIndex.from_embeddings(g_emb), q_emb, k, g_lat, g_lon)


def knn_predict(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    g_lat: np.ndarray,
    g_lon: np.ndarray,
    k: int = 10,
    strategy: str = DEFAULT_STRATEGY,
    **vote_kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Guess a location for each query from its top-k gallery neighbours (exact cosine search).

    Args:
        q_emb: ``(n, d)`` L2-normalised query embeddings.
        g_emb: ``(m, d)`` L2-normalised gallery embeddings.
        g_lat, g_lon: ``(m,)`` gallery coordinates, degrees.
        k: neighbours that vote (capped at ``m``).
        strategy: ``nn``, ``weighted-mean`` or ``densest`` (see :mod:`geosolver.locate`).
        **vote_kw: ``temperature``, ``radius_km`` (km) for :meth:`~geosolver.locate.Neighbours.vote`.

    Returns:
        ``(lat, lon)`` of the guesses, ``(n,)`` degrees each.
    """
    v = knn_neighbours(q_emb, g_emb, g_lat, g_lon, k).vote(strategy, **vote_kw)
    return v.lat, v.lon


@dataclass
class ValidationSet:
    """Held-out queries and a gallery, with fixed random gallery pairs for the rank correlation.

    Attributes:
        q_lat, q_lon: ``(n,)`` query coordinates, degrees.
        g_lat, g_lon: ``(m,)`` gallery coordinates, degrees.
        pair_i, pair_j: gallery row pairs for Spearman(similarity, distance).
    """

    q_lat: np.ndarray
    q_lon: np.ndarray
    g_lat: np.ndarray
    g_lon: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray

    @classmethod
    def build(cls, q_lat, q_lon, g_lat, g_lon, n_pairs: int = 20000, seed: int = 0) -> "ValidationSet":
        g_lat, g_lon = np.asarray(g_lat, np.float64), np.asarray(g_lon, np.float64)
        i, j = random_pairs(len(g_lat), n_pairs, np.random.default_rng(seed))
        return cls(np.asarray(q_lat, np.float64), np.asarray(q_lon, np.float64), g_lat, g_lon, i, j)

    def metrics(self, q_emb: np.ndarray, g_emb: np.ndarray, k: int = 10, strategy: str = DEFAULT_STRATEGY) -> dict[str, float]:
        """All validation numbers for the current embeddings.

        Returns:
            ``geoscore``, ``median_km``, ``mean_km``, ``acc@<t>km`` (queries vs gallery);
            ``spearman`` (similarity vs distance over the gallery pairs; more negative = better);
            ``mean_cosine``, ``effective_rank``, ``uniformity`` of the gallery embeddings.
        """
        out: dict[str, float] = {}
        if len(self.q_lat):
            plat, plon = knn_predict(q_emb, g_emb, self.g_lat, self.g_lon, k, strategy)
            m = distance_metrics(haversine(self.q_lat, self.q_lon, plat, plon, check=False))
            m.pop("n", None)
            out.update(m)
        out["spearman"] = spearman_pairs([g_emb], self.g_lat, self.g_lon, self.pair_i, self.pair_j)[0]
        d = diagnostics(g_emb)
        out.update({k_: float(d[k_]) for k_ in ("mean_cosine", "effective_rank", "uniformity")})
        return out


def collapse_reason(
    metrics: dict[str, float],
    initial: dict[str, float],
    rank_frac: float = 0.5,
    max_cosine: float = 0.95,
) -> str | None:
    """Why the space counts as collapsed, or ``None``.

    Collapsed when the effective rank fell below ``rank_frac`` × its initial value, or the mean
    pairwise cosine rose above ``max_cosine``. When the base model already exceeds ``max_cosine``
    (a very anisotropic space) the cosine threshold becomes halfway between its initial value and 1.
    """
    er, er0 = metrics["effective_rank"], initial["effective_rank"]
    if rank_frac > 0 and er < rank_frac * er0:
        return f"effective rank {er:.2f} fell below {rank_frac:g} x its initial {er0:.2f}"
    mc, mc0 = metrics["mean_cosine"], initial["mean_cosine"]
    thr = max_cosine if mc0 < max_cosine else 0.5 * (mc0 + 1.0)
    if mc > thr:
        return f"mean pairwise cosine {mc:.4f} rose above {thr:.4f} (initially {mc0:.4f})"
    return None
