"""Low-level numerics shared by the vote (:mod:`geosolver.locate`), the priors
(:mod:`geosolver.prior`, :mod:`geosolver.heads`), zero-shot (:mod:`geosolver.zeroshot`), the
store and the analysis (``l2_normalize``).

It sits below all of them (imports only numpy and :mod:`geosolver.errors`), so none of those
modules has to import another to share it.
"""

from __future__ import annotations

import numpy as np

from geosolver.errors import LocateError


def softmax_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise ``softmax(sims / temperature)``; ``-inf`` entries (missing neighbours) get weight 0.

    Args:
        sims: ``(n, k)`` scores (similarities, logits).
        temperature: > 0; smaller concentrates the weight on the best scores.

    Returns:
        ``(n, k)`` float64 weights summing to 1 per row (a row of only ``-inf`` stays all 0).

    Raises:
        LocateError: ``temperature`` is not > 0.
    """
    if not temperature > 0:
        raise LocateError(f"temperature must be > 0, got {temperature}")
    s = np.asarray(sims, dtype=np.float64) / temperature
    m = np.max(s, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m)
    e[~np.isfinite(s)] = 0.0
    tot = e.sum(axis=1, keepdims=True)
    return e / np.where(tot > 0, tot, 1.0)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, eps)
