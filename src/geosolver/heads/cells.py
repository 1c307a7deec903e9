"""Geocells and the cell-classification head (PIGEON-style, on stored embeddings).

**Cells** (:class:`Geocells`): a balanced k-d split of the training coordinates in (lat, lon).
A cell holding more than ``max_per_cell`` training points is cut in two at the median of its
points along the side that is longer in km (latitude, or longitude × cos(latitude)), until no
cell holds more. So every cell holds between about ``max_per_cell / 2`` and ``max_per_cell``
training points — dense regions get small cells, empty ones (oceans) none of their own — and
the cells tile the whole sphere (the rectangles of the split cover every (lat, lon)), so any
point, e.g. a gallery neighbour, has exactly one cell. Why not a quadtree with min/max counts
or admin regions: a quadtree cut at fixed midpoints leaves cells with a handful of points
(which must then be dropped or merged), and admin regions need polygons we do not ship; the
median split needs neither and gives every class a similar number of examples.

A cell's **representative point** is the medoid of (up to 256 of) its training points: a real
training location (on land where the photos are), never the sea between two clusters.

**Haversine label smoothing**: the training target of an example at ``x`` whose own cell is
``c*`` is, over cells ``c``, ``q_c ∝ exp(-(d(r_c, x) - d(r_c*, x)) / τ)`` with ``r`` the
representative points, ``d`` the great-circle distance and ``τ`` (``tau_km``, default 75 km
as PIGEON) the scale: cells whose points are near the truth share the credit.

**Prediction**: the most probable cell's representative point. **Refinement**
(:meth:`CellsHead.refine`): the kNN vote restricted to the gallery neighbours that lie inside
the ``top_n`` most probable cells; the guess never leaves those cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geosolver.errors import HeadError
from geosolver.geo import EARTH_RADIUS_KM, haversine_torch, medoid
from geosolver.heads.base import Head, HeadGuess
from geosolver.locate import Neighbours, Vote

#: points a representative point is computed from (the medoid is quadratic in them)
MEDOID_SAMPLE = 256
KM_PER_DEG = np.pi * EARTH_RADIUS_KM / 180.0


@dataclass(frozen=True)
class Geocells:
    """A k-d split of the sphere into cells (see the module docstring).

    Attributes:
        split_dim: ``(nodes,)`` 0 = split on latitude, 1 = on longitude, -1 = a leaf.
        split_at: ``(nodes,)`` the split value (degrees): ``< value`` goes left.
        left, right: ``(nodes,)`` child node numbers (-1 at leaves).
        leaf_cell: ``(nodes,)`` the cell number of a leaf (-1 inside).
        lat, lon: ``(C,)`` each cell's representative point, degrees.
        count: ``(C,)`` training points in each cell.
    """

    split_dim: np.ndarray
    split_at: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_cell: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return int(self.lat.shape[0])

    def bounds(self) -> np.ndarray:
        """``(C, 4)`` ``[south, west, north, east]`` of each cell: the box of its leaf in the k-d
        split (a point on a cut belongs to the upper side); the boxes tile the sphere."""
        out = np.zeros((len(self), 4))
        todo = [(0, -90.0, -180.0, 90.0, 180.0)]
        while todo:
            node, s, w, n, e = todo.pop()
            dim = int(self.split_dim[node])
            if dim < 0:
                out[self.leaf_cell[node]] = (s, w, n, e)
                continue
            v = float(self.split_at[node])
            low, high = ((s, w, v, e), (v, w, n, e)) if dim == 0 else ((s, w, n, v), (s, v, n, e))
            todo += [(int(self.left[node]), *low), (int(self.right[node]), *high)]
        return out

    @classmethod
    def build(cls, lat: np.ndarray, lon: np.ndarray, max_per_cell: int, seed: int = 0) -> "Geocells":
        """Cells from training coordinates (degrees) holding at most ``max_per_cell`` points each."""
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        if lat.size == 0:
            raise HeadError("no training coordinates to build geocells from")
        if max_per_cell < 2:
            raise HeadError(f"max_per_cell must be >= 2, got {max_per_cell}")
        nodes: list[list] = []  # [dim, value, left, right, cell]
        members: list[np.ndarray] = []

        def add(idx: np.ndarray) -> int:
            nodes.append([-1, 0.0, -1, -1, -1])
            todo.append((len(nodes) - 1, idx))
            return len(nodes) - 1

        todo: list[tuple[int, np.ndarray]] = []
        add(np.arange(lat.size))
        while todo:
            node, idx = todo.pop()
            cut = _median_cut(lat[idx], lon[idx]) if idx.size > max_per_cell else None
            if cut is None:
                nodes[node][4] = len(members)
                members.append(idx)
                continue
            dim, value = cut
            x = (lat if dim == 0 else lon)[idx]
            nodes[node][0], nodes[node][1] = dim, value
            nodes[node][2] = add(idx[x < value])
            nodes[node][3] = add(idx[x >= value])
        arr = np.array(nodes, dtype=np.float64)
        rng = np.random.default_rng(seed)
        rep = np.array([_representative(lat[m], lon[m], rng) for m in members])
        return cls(
            arr[:, 0].astype(np.int8), arr[:, 1], arr[:, 2].astype(np.int64), arr[:, 3].astype(np.int64),
            arr[:, 4].astype(np.int64), rep[:, 0], rep[:, 1], np.array([m.size for m in members], np.int64),
        )

    def cell_of(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """The cell of each point (degrees, any shape): an int64 array of that shape."""
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        shape = lat.shape
        la, lo = lat.ravel(), lon.ravel()
        node = np.zeros(la.size, np.int64)
        while True:
            inner = self.split_dim[node] >= 0
            if not inner.any():
                break
            n = node[inner]
            x = np.where(self.split_dim[n] == 0, la[inner], lo[inner])
            node[inner] = np.where(x < self.split_at[n], self.left[n], self.right[n])
        return self.leaf_cell[node].reshape(shape)

    def arrays(self) -> dict[str, np.ndarray]:
        """The cells as named arrays (for ``cells.npz``)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays) -> "Geocells":
        return cls(**{f: np.asarray(arrays[f]) for f in cls.__dataclass_fields__})


def _median_cut(lat: np.ndarray, lon: np.ndarray) -> tuple[int, float] | None:
    """``(dim, value)`` cutting the points in two near their median along the longer side (km);
    ``None`` when every point has the same coordinates."""
    mid = np.radians(0.5 * (lat.max() + lat.min()))
    extent = [(lat.max() - lat.min()) * KM_PER_DEG, (lon.max() - lon.min()) * KM_PER_DEG * np.cos(mid)]
    for dim in np.argsort(extent)[::-1]:
        s = np.sort(lat if dim == 0 else lon)
        steps = np.flatnonzero(s[1:] > s[:-1]) + 1  # cut positions between two different values
        if steps.size:
            at = steps[np.argmin(np.abs(steps - s.size // 2))]
            return int(dim), float(0.5 * (s[at - 1] + s[at]))
    return None


def _representative(lat: np.ndarray, lon: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    pick = rng.choice(lat.size, MEDOID_SAMPLE, replace=False) if lat.size > MEDOID_SAMPLE else np.arange(lat.size)
    j = pick[medoid(lat[pick], lon[pick])]
    return float(lat[j]), float(lon[j])


def smooth_targets(true_lat: torch.Tensor, true_lon: torch.Tensor, cell_lat: torch.Tensor, cell_lon: torch.Tensor,
                   true_cell: torch.Tensor, tau_km: float) -> torch.Tensor:
    """Haversine label smoothing: ``(B, C)`` targets ``∝ exp(-(d(r_c, x) - d(r_c*, x)) / τ)``.

    Args:
        true_lat, true_lon: ``(B,)`` the examples' coordinates ``x`` (degrees).
        cell_lat, cell_lon: ``(C,)`` the cells' representative points ``r_c``.
        true_cell: ``(B,)`` each example's own cell ``c*``.
        tau_km: the scale τ (km): smaller concentrates the target on the true cell.
    """
    d = haversine_torch(true_lat[:, None], true_lon[:, None], cell_lat[None, :], cell_lon[None, :])  # (B, C)
    extra = d - d.gather(1, true_cell[:, None])
    return torch.softmax(-extra / tau_km, dim=1)


class CellsModel(torch.nn.Module):
    """Embedding → cell logits: layer norm, then a linear layer (``hidden = 0``) or a one-hidden-layer MLP."""

    def __init__(self, dim: int, n_cells: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        norm = torch.nn.LayerNorm(dim)  # unit-norm embeddings have entries ~1/sqrt(dim): rescale them
        if hidden:
            self.net = torch.nn.Sequential(
                norm, torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, n_cells)
            )
        else:
            self.net = torch.nn.Sequential(norm, torch.nn.Linear(dim, n_cells))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb)


class CellsHead(Head):
    """A trained cell classifier (load with :func:`geosolver.heads.load_head`).

    A :class:`~geosolver.prior.LocationPrior`: the probability of a neighbour's location is the
    probability of the cell it lies in.
    """

    kind = "cells"

    def __init__(self, model: CellsModel, cells: Geocells, info: dict, weight: float = 1.0, device: str = "cpu"):
        super().__init__(model, info, weight, device)
        self.cells = cells

    def cell_probs(self, emb: np.ndarray) -> np.ndarray:
        """``(n, C)`` float64 cell probabilities of L2-normalised embeddings ``(n, dim)``."""
        return self._batched(emb, lambda e: torch.softmax(self.model(e).double(), dim=1))

    def predict(self, emb: np.ndarray) -> HeadGuess:
        p = self.cell_probs(emb)
        top = np.argmax(p, axis=1)
        return HeadGuess(self.cells.lat[top], self.cells.lon[top], p[np.arange(len(top)), top])

    def probabilities(self, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        p = self.cell_probs(emb)
        return np.take_along_axis(p, self.cells.cell_of(lat, lon), axis=1)

    def refine(self, emb: np.ndarray, nb: Neighbours, top_n: int = 5, strategy: str = "densest", **vote_kw) -> Vote:
        """The kNN vote of the neighbours inside the ``top_n`` most probable cells.

        The others are dropped (as missing neighbours); the vote is ``strategy`` over the rest,
        and a guess that the averaging put outside those cells, or a query with no neighbour in
        them, falls back to the most similar neighbour inside them, or else to the top cell's
        representative point. So the guess always lies in one of the ``top_n`` cells.
        """
        if top_n < 1:
            raise HeadError(f"top_n must be >= 1, got {top_n}")
        p = self.cell_probs(emb)
        top = np.argsort(-p, axis=1, kind="stable")[:, :top_n]  # (n, N)
        inside = (self.cells.cell_of(nb.lat, nb.lon)[:, :, None] == top[:, None, :]).any(axis=2) & nb.valid
        kept = Neighbours(np.where(inside, nb.sims, -np.inf).astype(np.float32), np.where(inside, nb.rows, -1), nb.lat, nb.lon)
        v = kept.vote(strategy, **vote_kw)
        lat, lon, conf = v.lat.copy(), v.lon.copy(), v.confidence.copy()
        outside = ~(self.cells.cell_of(lat, lon)[:, None] == top).any(axis=1)
        if outside.any():
            nn = kept.vote("nn", **vote_kw)
            lat[outside], lon[outside] = nn.lat[outside], nn.lon[outside]
        none = ~inside.any(axis=1)
        lat[none], lon[none] = self.cells.lat[top[none, 0]], self.cells.lon[top[none, 0]]
        conf[none] = p[none, top[none, 0]]
        return Vote(lat, lon, conf)
