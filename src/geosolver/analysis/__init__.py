"""Exploratory analysis of embedding spaces: how well does similarity reflect geography?

* :class:`AnalyzeConfig` → :func:`analyze` → :class:`AnalyzeResult` — the whole analysis of one
  or more stores, with report (``geosolver analyze``; :func:`analyze_stores` is the same with
  keyword settings, returning ``stats.json``'s content);
* :mod:`.pairs` — exact blocked pair statistics (similarity vs haversine distance);
* :func:`fit_monotone_curve` / :class:`MonotoneCurve` — the ideal non-increasing μ(d);
* :func:`diagnostics` — collapse / cone diagnostics of a set of embeddings.
"""

from __future__ import annotations

import importlib
from typing import Any

from geosolver.errors import AnalysisError

from .config import AnalyzeConfig
from .curve import MonotoneCurve, count_rises, fit_monotone_curve
from .diagnostics import diagnostics, uniformity
from .pairs import PairStats, all_pairs_stats, default_distance_edges, sampled_pairs_stats

#: numpy only above: `geosolver analyze --help` imports this package without pandas. The run
#: itself (:mod:`.core`: stores, report, matplotlib) is imported on first use of these names.
_CORE = ("AnalyzeResult", "align_stores", "analyze", "analyze_stores")


def __getattr__(name: str) -> Any:
    if name not in _CORE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.core"), name)


__all__ = ["AnalysisError", "AnalyzeConfig", "MonotoneCurve", "PairStats", "all_pairs_stats", "count_rises",
           "default_distance_edges", "diagnostics", "fit_monotone_curve", "sampled_pairs_stats", "uniformity", *_CORE]
