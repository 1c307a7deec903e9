"""Location priors fused with the kNN vote: one interface, :class:`LocationPrior`.

A location prior is any model that, from a query's embedding alone, says how probable a place
is: the zero-shot text model (:class:`TextPrior`, below) or a learned location head
(:mod:`geosolver.heads`: geocell classifier, flow on the sphere). Every prior answers one
question — :meth:`LocationPrior.probabilities`: *for each query, how probable is each of its
neighbours' locations?* — as an ``(n, k)`` array in [0, 1]; :func:`prior_factors` turns those
into vote factors ``(p + ε)^λ`` and :meth:`geosolver.locate.Neighbours.vote` (``prior=``)
multiplies them into the neighbours' softmax weights. ``λ = 0`` gives factors of exactly 1,
which the vote treats as no prior at all (bit-for-bit the plain vote). Dependencies point one
way: ``prior`` imports neither :mod:`geosolver.locate` nor :mod:`geosolver.zeroshot`.

The text prior: a zero-shot CLIP's belief about a photo's country, fused with the kNN vote.

Retrieval alone is fooled by look-alikes: a Brazilian road can be the nearest neighbour of a
Portuguese one. A CLIP with a text tower can also say, from the photo alone, how likely each
country is (:class:`geosolver.zeroshot.ZeroShot`, prompts like "A Street View photo in
Portugal."). The fusion multiplies each neighbour's vote by that probability of the neighbour's
own country (or region):

    w'_ij  ∝  softmax(s_ij / T)_j · (p_i(g_ij) + ε)^λ        (renormalised over j)

* ``s_ij`` — cosine similarity of query ``i`` and its neighbour ``j``; ``T`` the kNN
  temperature (``--temperature``);
* ``g_ij`` — the neighbour's group: its country (ISO code of the nearest GeoNames populated place
  to its coordinates; ``by="country"``) or, with ``by="region"``, ``"CC/admin1"``; a neighbour with no group among
  the zero-shot labels (open sea, a place without a label) gets the uniform ``1/G``, i.e. the
  prior says nothing about it;
* ``p_i(g)`` — the zero-shot probability of group ``g`` for query ``i``: ``softmax`` of the
  model's logit scale (or ``1 / --text-temperature``) times the cosine of the photo with each
  label's prompt, summed per group;
* ``λ`` — the prior weight (``--prior-weight``, default 1): 0 switches the prior off, larger
  values trust the text model more; ``ε = 1e-4`` keeps a neighbour the text model rules out from
  vanishing entirely (so a row never loses all its weight).

Every strategy votes with the fused weights (``nn`` takes the neighbour with the largest fused
weight; ``weighted-mean`` and ``densest`` use them as the similarity mass), and the confidence is
the fused mass near the guess. The prior only *reweights* neighbours: it cannot put the guess
where no neighbour is, so a strong, consistent neighbourhood survives a text model that prefers a
neighbouring country, while a lone look-alike in a country the text model rules out loses to
weaker neighbours in the country it believes in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from geosolver.errors import LocateError
from geosolver.names import DEFAULT_PRIOR_WEIGHT, PRIOR_BY, PRIORS  # re-exported
from geosolver.places import load_places, nearest_places

if TYPE_CHECKING:  # TextPrior is handed a ready ZeroShot; prior never builds one
    from geosolver.zeroshot import ZeroShot

#: ε: the probability floor added before raising to λ.
PRIOR_FLOOR = 1e-4
#: The one table from a prior grouping to the zero-shot model's words for it: the label level a
#: text prior loads and the key :meth:`ZeroShot.probs_by` sums labels by.
TEXT_GROUPING = {"country": {"level": "countries", "probs_by": "cc"}, "region": {"level": "regions", "probs_by": "region"}}


@runtime_checkable
class LocationPrior(Protocol):
    """What every prior fused with the kNN vote provides (the text prior, the location heads).

    Attributes:
        weight: λ, the exponent on the probabilities (0: the plain vote).
    """

    weight: float

    def probabilities(self, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """``(n, k)`` float64 in [0, 1]: for query ``i`` (embedding ``emb[i]``, ``(n, dim)``), how
        probable the prior finds the place of its neighbour ``j`` at ``lat[i, j], lon[i, j]`` (degrees)."""
        ...

    def describe(self) -> dict:
        """What this prior is (JSON-ready), for configs and answers."""
        ...


def check_grouping(by: str) -> str:
    """``by`` if it is a prior grouping (:data:`PRIOR_BY`); one line naming the choices otherwise."""
    if by not in PRIOR_BY:
        raise LocateError(f"unknown prior grouping {by!r}; use one of {', '.join(PRIOR_BY)}")
    return by


def check_weight(weight: float) -> float:
    """``weight`` as a float if it is a finite number >= 0 (λ); one line otherwise."""
    if not (np.isfinite(weight) and weight >= 0):
        raise LocateError(f"prior weight must be a finite number >= 0, got {weight}")
    return float(weight)


def neighbour_groups(lat: np.ndarray, lon: np.ndarray, by: str = "country") -> np.ndarray:
    """The group of each point: ISO country code (``by="country"``) or ``"CC/admin1"`` (``by="region"``)
    of its nearest GeoNames populated place; any shape, returned as an object array of that shape."""
    check_grouping(by)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    if lat.size == 0:
        return np.empty(lat.shape, dtype=object)
    rows, _ = nearest_places(lat.ravel(), lon.ravel())
    places = load_places()
    keys = places["cc"].astype(str)
    if by == "region":
        keys = keys + "/" + places["admin1"].astype(str)
    cc = keys.to_numpy(dtype=object)[rows]
    return cc.reshape(lat.shape)


def neighbour_probs(group_probs: np.ndarray, group_keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The zero-shot probability of each neighbour's group, ``p_i(g_ij)``.

    Args:
        group_probs: ``(n, G)`` zero-shot probabilities per group, rows summing to 1.
        group_keys: ``(G,)`` the groups (country codes or ``"CC/admin1"``).
        groups: ``(n, k)`` each neighbour's group (:func:`neighbour_groups`).

    Returns:
        ``(n, k)`` float64; a neighbour whose group is not in ``group_keys`` gets the uniform ``1/G``.
    """
    p = np.asarray(group_probs, np.float64)
    groups = np.asarray(groups, dtype=object)
    if p.ndim != 2 or groups.ndim != 2 or p.shape[0] != groups.shape[0] or p.shape[1] != len(group_keys) or p.shape[1] == 0:
        raise LocateError(
            f"text prior: group_probs {p.shape}, {len(group_keys)} group keys and neighbour groups {groups.shape} do not fit"
        )
    keys = pd.Index(np.asarray(group_keys).astype(str))
    if not keys.is_unique:
        raise LocateError("text prior: the group keys are not unique")
    idx = keys.get_indexer(groups.ravel().astype(str)).astype(np.int64).reshape(groups.shape)
    looked_up = np.take_along_axis(p, np.clip(idx, 0, None), axis=1)
    return np.where(idx >= 0, looked_up, 1.0 / p.shape[1])


def prior_factors(probs: np.ndarray, weight: float = DEFAULT_PRIOR_WEIGHT, floor: float = PRIOR_FLOOR) -> np.ndarray:
    """The vote factors ``(p + ε) ** λ`` of neighbour probabilities ``probs`` (:func:`neighbour_probs`).

    Raises:
        LocateError: ``weight`` is not a finite number >= 0 or ``floor`` not a finite number > 0.
    """
    weight = check_weight(weight)
    if not (np.isfinite(floor) and floor > 0):
        raise LocateError(f"prior floor must be a finite number > 0, got {floor}")
    return (np.asarray(probs, np.float64) + floor) ** weight


def vote_factors(prior: LocationPrior, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, weight: float | None = None) -> np.ndarray:
    """``(n, k)`` vote factors of any :class:`LocationPrior` for queries ``emb`` whose neighbours lie at
    ``lat, lon`` — :func:`prior_factors` of its probabilities at λ = ``weight`` (``None``: the prior's)."""
    return prior_factors(prior.probabilities(emb, lat, lon), prior.weight if weight is None else weight)


def neighbour_prior(
    group_probs: np.ndarray,
    group_keys: np.ndarray,
    groups: np.ndarray,
    weight: float = DEFAULT_PRIOR_WEIGHT,
    floor: float = PRIOR_FLOOR,
) -> np.ndarray:
    """``(n, k)`` vote factors ``(p_i(g_ij) + ε) ** λ``: :func:`prior_factors` of :func:`neighbour_probs`
    (weight 0: every factor is 1, the plain kNN vote)."""
    return prior_factors(neighbour_probs(group_probs, group_keys, groups), weight, floor)


class TextPrior:
    """The text prior of a :class:`~geosolver.zeroshot.ZeroShot` model (a :class:`LocationPrior`).

    Args:
        zeroshot: the zero-shot model (same encoder as the gallery), at the level ``by`` needs
            (``TEXT_GROUPING[by]["level"]``, or finer).
        by: ``"country"`` or ``"region"`` — what the neighbours are matched on.
        weight: λ (see the module docstring).
    """

    def __init__(self, zeroshot: "ZeroShot", by: str = "country", weight: float = DEFAULT_PRIOR_WEIGHT):
        self.by = check_grouping(by)
        self.weight = check_weight(weight)
        self.zeroshot = zeroshot

    def group_probs(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n, G)`` zero-shot probabilities per group (country or region, as ``by``) and the ``(G,)`` group keys."""
        return self.zeroshot.probs_by(emb, by=TEXT_GROUPING[self.by]["probs_by"])

    def probabilities(self, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """``(n, k)`` zero-shot probability of each neighbour's group (:func:`neighbour_probs`)."""
        probs, keys = self.group_probs(emb)
        return neighbour_probs(probs, keys, neighbour_groups(lat, lon, self.by))

    def top_groups(self, probs: np.ndarray, keys: np.ndarray, top: int = 5) -> list[list[dict]]:
        """Per query, the ``top`` most probable groups best first: ``{"group", "name", "probability"}``."""
        labels = self.zeroshot.labels
        name_of = {}
        for key, cc, country, region in zip(labels.keys, labels.cc, labels.country, labels.region):
            name_of.setdefault(str(cc), str(country))
            if region:
                name_of.setdefault(f"{cc}/{region}", f"{region}, {country}")
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
        return [
            [{"group": str(keys[j]), "name": name_of.get(str(keys[j]), str(keys[j])), "probability": float(probs[i, j])} for j in row]
            for i, row in enumerate(order)
        ]

    def describe(self) -> dict:
        """What this prior is, for configs and JSON answers."""
        zs = self.zeroshot
        return {"prior": "text", "by": self.by, "weight": self.weight, "level": zs.labels.level, "logit_scale": float(zs.logit_scale)}
