"""The "ideal curve": the best non-increasing similarity-vs-distance curve μ(d).

Fitted by isotonic regression on the binned mean similarity (weighted by pair counts), which
is exactly the least-squares non-increasing step function over all pairs (the within-bin
variance does not depend on the fit). Evaluated between knots by linear interpolation; the
fine-tuning objective reuses it as its target μ(d).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from geosolver.errors import AnalysisError, InvalidValueError


@dataclass(frozen=True)
class MonotoneCurve:
    """A non-increasing curve of cosine similarity against distance.

    Attributes:
        knots_km: increasing distances in km, shape ``(k,)``.
        values: similarity at each knot, non-increasing, shape ``(k,)``.

    ``curve(km)`` interpolates linearly between knots and is constant beyond the first/last.
    """

    knots_km: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        k = np.asarray(self.knots_km, dtype=np.float64)
        v = np.asarray(self.values, dtype=np.float64)
        if k.ndim != 1 or k.shape != v.shape or k.size == 0:
            raise InvalidValueError(f"MonotoneCurve: knots {k.shape} and values {v.shape} must be equal non-empty 1-D")
        if np.any(np.diff(k) <= 0):
            raise InvalidValueError("MonotoneCurve: knots_km must be strictly increasing")
        object.__setattr__(self, "knots_km", k)
        object.__setattr__(self, "values", v)

    def __call__(self, km) -> np.ndarray:
        """Similarity at distance(s) ``km`` (array-like, km); float64, same shape."""
        return np.interp(np.asarray(km, dtype=np.float64), self.knots_km, self.values)

    @property
    def is_non_increasing(self) -> bool:
        return bool(np.all(np.diff(self.values) <= 1e-12))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "isotonic-non-increasing", "interpolation": "linear", "knots_km": self.knots_km.tolist(), "sim": self.values.tolist()}

    def to_json(self) -> str:
        """JSON text ``{"knots_km": [...], "sim": [...], ...}``."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: str | dict) -> "MonotoneCurve":
        """Inverse of :meth:`to_json` (also accepts the parsed dict)."""
        d = json.loads(data) if isinstance(data, str) else data
        return cls(np.asarray(d["knots_km"], dtype=np.float64), np.asarray(d["sim"], dtype=np.float64))


def fit_monotone_curve(bin_centers_km, mean_sim, counts) -> MonotoneCurve:
    """Isotonic (non-increasing) fit of binned mean similarity against distance.

    Args:
        bin_centers_km: ``(B,)`` distance-bin midpoints in km, increasing.
        mean_sim: ``(B,)`` mean cosine similarity of the pairs in each bin (NaN for empty bins).
        counts: ``(B,)`` pairs per bin; bins with 0 pairs are skipped.

    Returns:
        :class:`MonotoneCurve` with one knot per non-empty bin.
    """
    from sklearn.isotonic import IsotonicRegression  # sklearn: heavy, loaded only when a curve is fitted

    x = np.asarray(bin_centers_km, dtype=np.float64)
    y = np.asarray(mean_sim, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)
    ok = (w > 0) & np.isfinite(y)
    if not ok.any():
        raise AnalysisError("fit_monotone_curve: no non-empty bins")
    iso = IsotonicRegression(increasing=False).fit(x[ok], y[ok], sample_weight=w[ok])
    return MonotoneCurve(x[ok], iso.predict(x[ok]))


def count_rises(mean_sim, std_sim, counts, z: float = 3.0) -> dict[str, int]:
    """Distance bins where the mean curve rises instead of falling.

    Consecutive non-empty bins ``k → k'`` count as a rise when ``mean[k'] > mean[k]``
    (``rises``), and as a *significant* rise (``violations``) when the increase exceeds
    ``z`` standard errors, ``z·sqrt(std_k²/n_k + std_k'²/n_k')`` — sampling noise in a
    bin with few pairs does not count.
    """
    m = np.asarray(mean_sim, np.float64)
    sd = np.asarray(std_sim, np.float64)
    n = np.asarray(counts, np.float64)
    ok = n > 0
    m, sd, n = m[ok], sd[ok], n[ok]
    diff = np.diff(m)
    se = np.sqrt(sd[:-1] ** 2 / n[:-1] + sd[1:] ** 2 / n[1:])
    return {"rises": int(np.count_nonzero(diff > 0)), "violations": int(np.count_nonzero(diff > z * se))}
