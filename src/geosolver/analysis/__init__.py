"""Exploratory analysis of embedding spaces: how well does similarity reflect geography?

* :class:`AnalyzeConfig` → :func:`analyze` → :class:`AnalyzeResult` — the whole analysis of one
  or more stores, with report (``geosolver analyze``; :func:`analyze_stores` is the same with
  keyword settings, returning ``stats.json``'s content);
* :mod:`.pairs` — exact blocked pair statistics (similarity vs haversine distance);
* :func:`fit_monotone_curve` / :class:`MonotoneCurve` — the ideal non-increasing μ(d);
* :func:`diagnostics` — collapse / cone diagnostics of a set of embeddings.
"""

from .core import AnalysisError, AnalyzeConfig, AnalyzeResult, align_stores, analyze, analyze_stores
from .curve import MonotoneCurve, count_rises, fit_monotone_curve
from .diagnostics import diagnostics, uniformity
from .pairs import PairStats, all_pairs_stats, default_distance_edges, sampled_pairs_stats

__all__ = [
    "AnalysisError",
    "AnalyzeConfig",
    "AnalyzeResult",
    "MonotoneCurve",
    "PairStats",
    "align_stores",
    "all_pairs_stats",
    "analyze",
    "analyze_stores",
    "count_rises",
    "default_distance_edges",
    "diagnostics",
    "fit_monotone_curve",
    "sampled_pairs_stats",
    "uniformity",
]
