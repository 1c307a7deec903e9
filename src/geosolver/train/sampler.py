"""Batches that contain near pairs: groups of images drawn from the same grid cell.

Random batches from a world-wide dataset hold almost no pairs closer than a few hundred km, so
neither a contrastive loss (no positives) nor the distance-consistency loss (no short-distance
pairs) learns anything about the near range that retrieval depends on. :class:`CellGroupBatchSampler`
builds each batch from ``B // m`` groups of ``m`` images from one ``cell_deg``° cell (cells drawn
with probability ∝ ``size**power``, ``power = 0.5`` by default, without repeating a cell inside a
batch while enough cells remain), the remaining ``B mod m`` slots from the whole dataset.
Deterministic: the batches depend only on ``seed`` and the epoch number, so a
:class:`SamplerPosition` (epoch, batches taken) is all a resumed run needs to go on with the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from geosolver.errors import TrainError
from geosolver.geo import grid_cell


@dataclass
class SamplerPosition:
    """Where a stream of training batches stands: the sampler's ``epoch`` and how many of this
    process's batches of it were taken (``batch``)."""

    epoch: int = 0
    batch: int = 0


class CellGroupBatchSampler:
    """A ``torch.utils.data`` batch sampler yielding lists of row indices.

    Args:
        lat, lon: ``(n,)`` coordinates of the training rows, degrees.
        batch_size: rows per batch ``B``.
        group_size: rows per cell group ``m`` (1 = plain random batches).
        cell_deg: grid cell size in degrees.
        batches_per_epoch: batches yielded by one iteration (default ``ceil(n / B)``).
        seed: base seed; epoch ``e`` uses ``seed + e`` (see :meth:`set_epoch`).
        power: cells are drawn with probability ∝ ``size ** power``.

    A group takes ``m`` distinct rows of its cell; only cells with at least ``m`` rows are drawn
    while such cells exist (otherwise cells with ≥ 2 rows); a cell appears at most once per batch,
    and slots left when there are too few cells are filled with random rows.
    """

    def __init__(
        self,
        lat: np.ndarray,
        lon: np.ndarray,
        batch_size: int,
        group_size: int = 4,
        cell_deg: float = 2.0,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        power: float = 0.5,
    ):
        n = len(lat)
        if batch_size < 2 or batch_size > n:
            raise TrainError(f"batch_size must be in [2, {n}] (the number of training rows), got {batch_size}")
        if not 1 <= group_size <= batch_size:
            raise TrainError(f"group_size must be in [1, batch_size={batch_size}], got {group_size}")
        self.n = n
        self.batch_size = int(batch_size)
        self.group_size = int(group_size)
        self.seed = int(seed)
        self.epoch = 0
        self.batches_per_epoch = int(batches_per_epoch or -(-n // batch_size))
        self.cells = grid_cell(lat, lon, cell_deg)
        order = np.argsort(self.cells, kind="stable")
        uniq, starts, counts = np.unique(self.cells[order], return_index=True, return_counts=True)
        self.members = [order[s : s + c] for s, c in zip(starts, counts)]
        counts = counts.astype(np.float64)
        eligible = counts >= self.group_size
        if not eligible.any():
            eligible = counts >= 2
        self._eligible = np.flatnonzero(eligible)
        p = counts[self._eligible] ** power
        self._p = p / p.sum() if p.size else p

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the batches deterministically)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        m = self.group_size
        n_groups = self.batch_size // m if m > 1 and self._eligible.size else 0
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            if n_groups:
                k = min(n_groups, self._eligible.size)  # never the same cell twice in a batch
                cells = rng.choice(self._eligible, size=k, replace=False, p=self._p)
                for c in cells:
                    mem = self.members[c]
                    batch.extend(rng.choice(mem, size=min(m, mem.size), replace=False).tolist())
            # Fill the rest with distinct random rows not already in the batch.
            need = self.batch_size - len(batch)
            if need > 0:
                taken = np.zeros(self.n, bool)
                taken[batch] = True
                free = np.flatnonzero(~taken)
                batch.extend(rng.choice(free, size=min(need, free.size), replace=False).tolist())
            yield [int(i) for i in batch]
