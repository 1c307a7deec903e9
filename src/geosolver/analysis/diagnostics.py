"""Collapse / cone (anisotropy) diagnostics of a set of embeddings."""

from __future__ import annotations

import numpy as np

from geosolver.errors import AnalysisError
from geosolver.numeric import l2_normalize


def diagnostics(emb: np.ndarray, block: int = 2048, uniformity_value: float | None = None) -> dict[str, float]:
    """Anisotropy and dimensional-collapse numbers for ``emb``.

    Args:
        emb: ``(n, d)`` float array (rows are L2-normalised here, so cosine = dot product), n ≥ 2.
        block: rows per block for the pairwise uniformity sum.
        uniformity_value: the uniformity of these same embeddings if already known (e.g.
            :meth:`PairStats.uniformity` from the all-pairs pass), to skip the extra pass.

    Returns:
        ``n``, ``dim``;
        ``mean_cosine``: exact mean cosine over the ``n(n−1)/2`` pairs, ``(‖Σx‖² − n)/(n(n−1))``;
        ``mean_norm``: ‖mean embedding‖ (1 = all identical, ≈ 0 = centred);
        ``effective_rank``: Roy & Vetterli (2007), ``exp(H(p))`` with ``p = σ/Σσ`` the normalised
        singular values of the **uncentred** matrix (1 … d);
        ``effective_rank_centered``: the same for the mean-centred matrix;
        ``pc1_variance_share``, ``pc10_variance_share``: share of the total variance (centred)
        in the top 1 / top 10 principal components;
        ``uniformity``: Wang & Isola (2020), ``log mean exp(−2‖x−y‖²)`` over all pairs ``i < j``
        (exact, blockwise; −4 for uniform on a high-dimensional sphere … 0 for collapse).
    """
    x = l2_normalize(emb)
    n, d = x.shape
    if n < 2:
        raise AnalysisError(f"diagnostics need at least 2 embeddings, got {n}")
    x64 = x.astype(np.float64)
    total = x64.sum(axis=0)
    # (‖Σx‖² − Σ‖x‖²) / (n(n−1)); Σ‖x‖² = n for unit rows, summed here to absorb float32 rounding
    mean_cos = (float(total @ total) - float((x64 * x64).sum())) / (n * (n - 1))

    mu = total / n
    # one float32 matmul of the centred rows (no cancellation); the uncentred Gram is C + n·μμᵀ
    xc = x - mu.astype(np.float32)
    cn = (xc.T @ xc).astype(np.float64)  # (d, d) = n · covariance
    gram = cn + n * np.outer(mu, mu)  # (d, d) = XᵀX, eigenvalues = squared singular values of X
    sv = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))
    cov = cn / n
    ev = np.clip(np.linalg.eigvalsh(cov), 0.0, None)[::-1]
    svc = np.sqrt(ev * n)
    tot_var = ev.sum()

    return {
        "n": int(n),
        "dim": int(d),
        "mean_cosine": float(mean_cos),
        "mean_norm": float(np.linalg.norm(mu)),
        "effective_rank": _erank(sv),
        "effective_rank_centered": _erank(svc),
        "pc1_variance_share": float(ev[0] / tot_var) if tot_var > 0 else float("nan"),
        "pc10_variance_share": float(ev[:10].sum() / tot_var) if tot_var > 0 else float("nan"),
        "uniformity": uniformity(x, block=block) if uniformity_value is None else float(uniformity_value),
    }


def _erank(sv: np.ndarray) -> float:
    s = np.asarray(sv, np.float64)
    s = s[s > 0]
    if s.size == 0:
        return float("nan")
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def uniformity(x: np.ndarray, t: float = 2.0, block: int = 2048) -> float:
    """``log mean_{i<j} exp(−t‖x_i − x_j‖²)`` for unit rows ``x`` (``‖x−y‖² = 2 − 2 x·y``), exact over all pairs."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    acc = 0.0
    for a in range(0, n - 1, block):
        b = min(n, a + block)
        s = x[a:b] @ x[a:].T
        v = np.exp(np.float32(-2.0 * t) * (np.float32(1.0) - s))  # exp(-t(2-2s))
        v[:, : b - a] = np.triu(v[:, : b - a], k=1)
        acc += float(v.sum(dtype=np.float64))
    return float(np.log(acc / (n * (n - 1) / 2)))
