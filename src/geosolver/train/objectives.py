"""Training objectives: pure torch functions of a batch of embeddings and its coordinates.

Every function takes ``emb`` ``(B, d)`` **L2-normalised** embeddings (so ``emb @ emb.T`` is the
cosine similarity) and, where distances matter, ``lat``/``lon`` ``(B,)`` in degrees. Pairs are the
``B(B−1)/2`` unordered pairs ``i < j`` unless stated otherwise.

* :func:`geo_contrastive_loss` — multi-positive InfoNCE (SupCon form): positives are pairs closer
  than ``radius_km`` or in the same grid cell.
* :func:`distance_consistency_loss` — the founding idea: the weighted mean squared deviation of the
  pair similarities from a target non-increasing curve ``μ(d)`` (see :class:`TargetCurve`), with
  pairs re-weighted by :func:`distance_bin_weights` so every distance bin of the batch counts the same.
  ``max_km`` restricts it to the pairs closer than that (the range where the curve still falls).
* :func:`rank_n_contrast_loss` — Rank-N-Contrast (Zha et al., NeurIPS 2023) with haversine km as
  the label distance: every other sample is a positive contrasted against those at least as far.
* :func:`soft_contrastive_loss` — InfoNCE with soft targets ``q_ij ∝ exp(−d_ij / scale)``
  (:func:`soft_contrastive_targets`) instead of a hard radius.
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
from geosolver.train.config import DEFAULT_BALANCE_EDGES_KM, DEFAULT_SOFT_SCALE_KM, ObjectiveWeights


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
    max_km: float | None = None,
) -> torch.Tensor:
    """Weighted mean squared deviation of pair similarities from ``μ(d)``:
    ``Σ_p w_p (s_p − μ(d_p))²`` over pairs ``i < j`` (closer than ``max_km`` when it is given).

    Variants (the founding objective's, chosen by settings): ``μ`` the base model's own mean curve
    (``sharpen = 1``: keep the base model's similarity-vs-distance relation, move only the pairs
    that deviate from it) or stretched (``sharpen > 1``, :func:`sharpen_values`); and the
    **falling range** ``max_km``: the base curve is flat beyond a few thousand km (≈ 2000 km in the
    analysis), where μ says nothing about distance and the term would only pull far pairs towards
    one similarity — with ``max_km`` those pairs are left out entirely (no gradient) and the bin
    weights are shared among the pairs that remain.

    Args:
        emb: ``(B, d)`` L2-normalised embeddings, B ≥ 2.
        lat, lon: ``(B,)`` degrees.
        target: the curve μ (a :class:`TargetCurve`, or any callable km tensor → similarity tensor).
        edges_km: distance bins for :func:`distance_bin_weights`; ``None`` weights pairs equally.
        max_km: only pairs with ``d < max_km`` count; ``None``: every pair.

    Returns:
        scalar loss (0 exactly when every counted pair similarity equals μ of its distance; 0,
        still attached to the graph, when no pair is closer than ``max_km``).
    """
    i, j = upper_pairs(emb.shape[0], emb.device)
    d = pair_distances_km(lat, lon)[i, j]
    if max_km is not None:
        keep = d < max_km
        if not bool(keep.any()):
            return emb.sum() * 0.0
        i, j, d = i[keep], j[keep], d[keep]
    sim = (emb[i] * emb[j]).sum(dim=-1).float()
    mu = target(d).to(sim.dtype)
    if edges_km is None:
        w = torch.full_like(sim, 1.0 / sim.numel())
    else:
        w = distance_bin_weights(d, edges_km).to(sim.dtype)
    return (w * (sim - mu) ** 2).sum()


# ----------------------------------------------------------------------------------------------
# Rank-N-Contrast
# ----------------------------------------------------------------------------------------------
def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` → ``(n, n−1)``: each row without its diagonal entry, order kept."""
    n = m.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=m.device)
    return m[off].view(n, n - 1)


def rank_n_contrast_loss(
    emb: torch.Tensor,
    lat: torch.Tensor,
    lon: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Rank-N-Contrast (Zha, Cao, Son, Yang, Katabi: "Rank-N-Contrast: Learning Continuous
    Representations for Regression", NeurIPS 2023), with the haversine distance (km) between photo
    locations as the label distance.

    For anchor ``i`` each other sample ``j`` is a positive, contrasted against
    ``S_ij = {k ≠ i : d(i,k) ≥ d(i,j)}`` (the samples at least as far from ``i`` as ``j``, ``j``
    and its ties included)::

        L = −1/(n(n−1)) Σ_i Σ_{j≠i} log( exp(s_ij/τ) / Σ_{k∈S_ij} exp(s_ik/τ) )

    so the similarities of anchor ``i`` are pushed into the order of its distances. A pair that
    is the farthest from its anchor contributes ``log 1 = 0``; ``n = 2`` gives 0.

    Similarity: ``s`` is the **cosine** similarity and ``τ`` the run's ``temperature`` (0.07 by
    default). The paper's default ``τ = 2`` goes with the negative L2 distance between
    unnormalised features; on unit vectors ``−‖x−y‖ ∈ [−2, 0]``, so ``τ = 2`` would keep every
    logit within 1 of the others (an almost uniform softmax, tiny gradients). Geosolver retrieves
    by cosine, so the loss uses cosine logits at the contrastive losses' temperature.

    Computed per anchor by sorting its ``n−1`` distances and taking suffix log-sum-exps
    (``O(n² log n)`` time, ``O(n²)`` memory; ties share one denominator).

    Args:
        emb: ``(B, d)`` L2-normalised embeddings, B ≥ 2.
        lat, lon: ``(B,)`` degrees.
        temperature: τ > 0.

    Returns:
        scalar loss.
    """
    n = emb.shape[0]
    if n < 2:
        raise ValueError("Rank-N-Contrast needs at least 2 samples")
    d = _off_diagonal(pair_distances_km(lat, lon))  # (n, n-1) float64
    logits = _off_diagonal((emb @ emb.T).float() / temperature)
    d_sorted, order = d.sort(dim=1)  # ascending distance per anchor
    l_sorted = logits.gather(1, order)
    # tail[i, p] = logsumexp(l_sorted[i, p:]) — the denominator over everything at least as far
    tail = torch.logcumsumexp(l_sorted.flip(1), dim=1).flip(1)
    first = torch.searchsorted(d_sorted, d_sorted, right=False)  # first position with d ≥ d_ij (ties in)
    return -(l_sorted - tail.gather(1, first)).mean()


# ----------------------------------------------------------------------------------------------
# soft-contrastive
# ----------------------------------------------------------------------------------------------
def soft_contrastive_targets(lat: torch.Tensor, lon: torch.Tensor, scale_km: float = DEFAULT_SOFT_SCALE_KM) -> torch.Tensor:
    """Target distributions ``q_ij ∝ exp(−d_ij / scale_km)`` over ``j ≠ i``.

    Args:
        lat, lon: ``(B,)`` degrees, B ≥ 2.
        scale_km: > 0; as it goes to 0 each row puts all its mass on the nearest neighbour(s).

    Returns:
        ``(B, B)`` float64, rows summing to 1, zero diagonal (no gradient).
    """
    if not scale_km > 0:
        raise ValueError(f"soft-contrastive scale must be > 0 km, got {scale_km}")
    with torch.no_grad():
        d = pair_distances_km(lat, lon)
        eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
        return torch.softmax((-d / float(scale_km)).masked_fill(eye, float("-inf")), dim=1)


def soft_contrastive_loss(
    emb: torch.Tensor,
    lat: torch.Tensor,
    lon: torch.Tensor,
    scale_km: float = DEFAULT_SOFT_SCALE_KM,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE whose targets decay with geodesic distance instead of a hard radius.

    ``L = −1/B Σ_i Σ_{j≠i} q_ij log p_ij`` with ``p_ij = softmax_{j≠i}(s_ij/τ)`` (cosine ``s``) and
    ``q_ij ∝ exp(−d_ij / scale_km)`` over ``j ≠ i`` (:func:`soft_contrastive_targets`): the
    cross-entropy of the model's neighbour distribution against a distance-decayed one. Its
    minimum is the targets' entropy ``H(q_i)``, not 0.

    Motivation: a hard radius (:func:`geo_contrastive_loss`) makes a photo 26 km away as much a
    negative as one on another continent, and near-but-outside pairs become false negatives.
    Soft, similarity-weighted targets in the style of SW-CLIP, and the spatial-autocorrelation
    view of Chen et al. (SIGSPATIAL 2025: a semivariogram of the labels, false negatives
    re-labelled as partial positives), replace the 0/1 targets with weights that fall smoothly
    with distance. Default scale 500 km: the weight halves every ≈ 350 km, so a batch's same-cell
    group (a 2° cell) holds most of the mass, pairs ~1000 km away keep ``e⁻² ≈ 0.14`` of it and
    pairs beyond ~2500 km (``< e⁻⁵``) practically none.

    Args:
        emb: ``(B, d)`` L2-normalised embeddings, B ≥ 2.
        lat, lon: ``(B,)`` degrees.
        scale_km: distance scale of the targets, km, > 0.
        temperature: τ > 0.

    Returns:
        scalar loss.
    """
    b = emb.shape[0]
    if b < 2:
        raise ValueError("soft-contrastive needs at least 2 samples")
    eye = torch.eye(b, dtype=torch.bool, device=emb.device)
    q = soft_contrastive_targets(lat, lon, scale_km).to(device=emb.device, dtype=torch.float32)
    logits = ((emb @ emb.T).float() / temperature).masked_fill(eye, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    return -(q * log_p).sum(dim=1).mean()


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
    soft_scale_km: float = DEFAULT_SOFT_SCALE_KM,
    consistency_max_km: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``Σ_k w_k · loss_k`` over the active terms.

    Args:
        emb: ``(B, d)`` **unnormalised or normalised** model outputs (normalised here).
        lat, lon: ``(B,)`` degrees.
        weights: term weights.
        temperature: τ of the contrastive, Rank-N-Contrast and soft-contrastive terms.
        target: required when ``weights.consistency != 0``.
        base: ``(B, d)`` base-model embeddings, required when ``weights.distill != 0``.
        soft_scale_km: the soft-contrastive targets' distance scale.
        consistency_max_km: the consistency term counts only pairs closer than this (None: all).

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
        parts["consistency"] = distance_consistency_loss(z, lat, lon, target, balance_edges_km, consistency_max_km)
    if weights.rnc:
        parts["rnc"] = rank_n_contrast_loss(z, lat, lon, temperature)
    if weights.soft:
        parts["soft"] = soft_contrastive_loss(z, lat, lon, soft_scale_km, temperature)
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
