"""Training objectives: pure torch functions of a batch of embeddings and its coordinates.

Every function takes ``emb`` ``(B, d)`` **L2-normalised** embeddings (so ``emb @ emb.T`` is the
cosine similarity) and, where distances matter, ``lat``/``lon`` ``(B,)`` in degrees. Pairs are the
``B(B−1)/2`` unordered pairs ``i < j`` unless stated otherwise.

* :func:`geo_contrastive_loss` — multi-positive InfoNCE (SupCon form): positives are pairs closer
  than ``radius_km`` or in the same grid cell.
* :func:`distance_consistency_loss` — the founding idea: the weighted mean squared deviation of the
  pair similarities from a target non-increasing curve ``μ(d)`` (see :class:`TargetCurve`), with
  pairs re-weighted by :func:`distance_bin_weights` so every distance bin of the batch counts the same.
* :func:`uniformity_loss` — Wang & Isola (2020), ``log mean exp(−t‖x−y‖²)``: an anti-collapse term.
* :func:`distill_loss` — ``mean(1 − cos(emb, base))``: keeps embeddings near the frozen base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geosolver.geo import haversine_torch
from geosolver.train.config import DEFAULT_BALANCE_EDGES_KM, ObjectiveWeights


def pair_distances_km(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """Great-circle distance matrix ``(B, B)`` in km for ``(B,)`` lat/lon in degrees (float64 math)."""
    la, lo = lat.double(), lon.double()
    return haversine_torch(la[:, None], lo[:, None], la[None, :], lo[None, :])


def upper_pairs(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row/column indices of the pairs ``i < j`` of ``n`` items, each ``(n(n−1)/2,)``."""
    iu = torch.triu_indices(n, n, offset=1, device=device)
    return iu[0], iu[1]


# ----------------------------------------------------------------------------------------------
# geo-contrastive
# ----------------------------------------------------------------------------------------------
def geo_contrastive_loss(
    emb: torch.Tensor,
    lat: torch.Tensor,
    lon: torch.Tensor,
    radius_km: float = 25.0,
    temperature: float = 0.07,
    cell: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch multi-positive InfoNCE (supervised-contrastive form).

    For each anchor ``i`` with at least one positive,
    ``ℓ_i = −mean_{p ∈ P(i)} log( exp(s_ip/τ) / Σ_{j≠i} exp(s_ij/τ) )``; the loss is the mean of
    ``ℓ_i`` over those anchors (0, still attached to the graph, when no anchor has a positive).

    Args:
        emb: ``(B, d)`` L2-normalised embeddings.
        lat, lon: ``(B,)`` degrees.
        radius_km: pairs closer than this (km) are positives.
        temperature: softmax temperature τ > 0.
        cell: optional ``(B,)`` integer cell ids; pairs in the same cell are positives too.

    Returns:
        scalar loss.
    """
    b = emb.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=emb.device)
    pos = pair_distances_km(lat, lon) < radius_km
    if cell is not None:
        pos = pos | (cell[:, None] == cell[None, :])
    pos = pos & ~eye
    logits = (emb @ emb.T).float() / temperature
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if not bool(has.any()):
        return emb.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1)[has] / n_pos[has]
    return per_anchor.mean()


# ----------------------------------------------------------------------------------------------
# distance consistency
# ----------------------------------------------------------------------------------------------
def interp1d(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Like ``numpy.interp``: linear interpolation of knots ``(xp, fp)`` at ``x``, constant outside.

    Args:
        x: any shape; xp: ``(k,)`` strictly increasing; fp: ``(k,)``.
    """
    xp = xp.to(x.dtype)
    fp = fp.to(x.dtype)
    if xp.numel() == 1:
        return torch.full_like(x, float(fp[0]))
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


@dataclass(frozen=True)
class TargetCurve:
    """The target similarity ``μ(d)`` of a pair at distance ``d`` km: a non-increasing
    piecewise-linear curve on knots, looked up without gradients.

    Attributes:
        knots_km: ``(k,)`` increasing distances, km.
        values: ``(k,)`` target cosine similarities (after sharpening), non-increasing.
        base_values: ``(k,)`` the fitted curve before sharpening.
        sharpen: the stretch factor ``s`` that produced ``values`` from ``base_values``.
    """

    knots_km: np.ndarray
    values: np.ndarray
    base_values: np.ndarray
    sharpen: float = 1.0

    @classmethod
    def from_monotone(cls, curve, sharpen: float = 1.0) -> "TargetCurve":
        """Build from a ``geosolver.analysis.MonotoneCurve`` (``knots_km``, ``values``), stretched by
        :func:`sharpen_values`."""
        k = np.asarray(curve.knots_km, np.float64)
        v = np.asarray(curve.values, np.float64)
        return cls(k, sharpen_values(v, sharpen), v, float(sharpen))

    def __call__(self, km: torch.Tensor) -> torch.Tensor:
        """μ(km) for a tensor of distances (km), same shape, no gradient."""
        with torch.no_grad():
            xp = torch.as_tensor(self.knots_km, device=km.device)
            fp = torch.as_tensor(self.values, device=km.device)
            return interp1d(km.double(), xp.double(), fp.double())

    def to_dict(self) -> dict:
        return {
            "kind": "isotonic-non-increasing",
            "interpolation": "linear",
            "knots_km": self.knots_km.tolist(),
            "sim": self.values.tolist(),
            "sim_before_sharpen": self.base_values.tolist(),
            "sharpen": self.sharpen,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "TargetCurve":
        """Inverse of :meth:`to_dict`; also accepts a plain ``MonotoneCurve.to_dict()`` (``knots_km``, ``sim``)."""
        k = np.asarray(d["knots_km"], np.float64)
        v = np.asarray(d["sim"], np.float64)
        base = np.asarray(d.get("sim_before_sharpen", v), np.float64)
        if k.ndim != 1 or k.shape != v.shape or k.size == 0 or np.any(np.diff(k) <= 0):
            raise ValueError("target curve: knots_km must be strictly increasing and match sim in length")
        return cls(k, v, base, float(d.get("sharpen", 1.0)))


def sharpen_values(values: np.ndarray, s: float) -> np.ndarray:
    """Stretch a non-increasing curve away from its far end: ``μ' = μ_far + (μ − μ_far)·s``,
    clipped to ≤ 1, where ``μ_far`` is the last (farthest) value. ``s = 1`` is the identity;
    ``s > 1`` asks near pairs to be more similar than the base model makes them."""
    v = np.asarray(values, np.float64)
    if not s > 0:
        raise ValueError(f"sharpen factor must be > 0, got {s}")
    far = v[-1]
    return np.minimum(far + (v - far) * float(s), 1.0)


def distance_bin_weights(d_km: torch.Tensor, edges_km: Sequence[float] = DEFAULT_BALANCE_EDGES_KM) -> torch.Tensor:
    """Per-pair weights so that every non-empty distance bin of the batch has the same total weight.

    ``w_p = 1 / count(bin(p))``, normalised to sum to 1: each of the ``m`` non-empty bins gets
    total weight ``1/m``, whatever its pair count (random batches are dominated by far pairs).

    Args:
        d_km: ``(P,)`` pair distances, km.
        edges_km: increasing bin edges (km); distances beyond the last edge fall in the last bin.

    Returns:
        ``(P,)`` float weights summing to 1 (no gradient).
    """
    with torch.no_grad():
        e = torch.as_tensor(list(edges_km), dtype=d_km.dtype, device=d_km.device)
        b = (torch.searchsorted(e, d_km.contiguous(), right=True) - 1).clamp(0, e.numel() - 2)
        counts = torch.bincount(b, minlength=e.numel() - 1).to(d_km.dtype)
        w = 1.0 / counts[b]
        return w / w.sum()


def distance_consistency_loss(
    emb: torch.Tensor,
    lat: torch.Tensor,
    lon: torch.Tensor,
    target: TargetCurve,
    edges_km: Sequence[float] | None = DEFAULT_BALANCE_EDGES_KM,
) -> torch.Tensor:
    """Weighted mean squared deviation of pair similarities from ``μ(d)``:
    ``Σ_p w_p (s_p − μ(d_p))²`` over pairs ``i < j``.

    Args:
        emb: ``(B, d)`` L2-normalised embeddings, B ≥ 2.
        lat, lon: ``(B,)`` degrees.
        target: the curve μ (a :class:`TargetCurve`, or any callable km tensor → similarity tensor).
        edges_km: distance bins for :func:`distance_bin_weights`; ``None`` weights pairs equally.

    Returns:
        scalar loss (0 exactly when every pair similarity equals μ of its distance).
    """
    i, j = upper_pairs(emb.shape[0], emb.device)
    d = pair_distances_km(lat, lon)[i, j]
    sim = (emb[i] * emb[j]).sum(dim=-1).float()
    mu = target(d).to(sim.dtype)
    if edges_km is None:
        w = torch.full_like(sim, 1.0 / sim.numel())
    else:
        w = distance_bin_weights(d, edges_km).to(sim.dtype)
    return (w * (sim - mu) ** 2).sum()


# ----------------------------------------------------------------------------------------------
# anti-collapse
# ----------------------------------------------------------------------------------------------
def uniformity_loss(emb: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola (2020): ``log mean_{i<j} exp(−t‖x_i − x_j‖²)`` (−4 ≈ uniform … 0 = collapsed).

    Args:
        emb: ``(B, d)`` L2-normalised embeddings, B ≥ 2.
    """
    i, j = upper_pairs(emb.shape[0], emb.device)
    sq = (2.0 - 2.0 * (emb[i] * emb[j]).sum(dim=-1)).float().clamp_min(0.0)
    return torch.logsumexp(-t * sq, dim=0) - float(np.log(sq.numel()))


def distill_loss(emb: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 − cos(emb_i, base_i))``: distance to the frozen base model's embeddings.

    Args:
        emb: ``(B, d)`` embeddings being trained (normalised or not).
        base: ``(B, d)`` the base model's embeddings of the same images (no gradient).
    """
    return (1.0 - F.cosine_similarity(emb.float(), base.float().detach(), dim=-1)).mean()


# ----------------------------------------------------------------------------------------------
# the weighted sum
# ----------------------------------------------------------------------------------------------
def combined_loss(
    emb: torch.Tensor,
    lat: torch.Tensor,
    lon: torch.Tensor,
    weights: ObjectiveWeights,
    *,
    radius_km: float = 25.0,
    temperature: float = 0.07,
    cell: torch.Tensor | None = None,
    target: TargetCurve | None = None,
    balance_edges_km: Sequence[float] | None = DEFAULT_BALANCE_EDGES_KM,
    base: torch.Tensor | None = None,
    uniformity_t: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_k w_k · loss_k`` over the active terms.

    Args:
        emb: ``(B, d)`` **unnormalised or normalised** model outputs (normalised here).
        lat, lon: ``(B,)`` degrees.
        weights: term weights.
        target: required when ``weights.consistency != 0``.
        base: ``(B, d)`` base-model embeddings, required when ``weights.distill != 0``.

    Returns:
        ``(total, parts)``: the scalar loss and each active term's unweighted value (floats).
    """
    z = F.normalize(emb.float(), dim=-1)
    parts: dict[str, torch.Tensor] = {}
    if weights.contrastive:
        parts["contrastive"] = geo_contrastive_loss(z, lat, lon, radius_km, temperature, cell)
    if weights.consistency:
        if target is None:
            raise ValueError("distance-consistency needs a target curve")
        parts["consistency"] = distance_consistency_loss(z, lat, lon, target, balance_edges_km)
    if weights.uniformity:
        parts["uniformity"] = uniformity_loss(z, uniformity_t)
    if weights.distill:
        if base is None:
            raise ValueError("the distillation term needs the base model's embeddings")
        parts["distill"] = distill_loss(z, base)
    if not parts:
        raise ValueError("no objective has a non-zero weight")
    total = sum(getattr(weights, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
