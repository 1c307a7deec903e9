"""The location head on the map: ``geosolver serve --head DIR [--fuse]``.

A trained head (:mod:`geosolver.heads`) says, from a photo's embedding alone, how probable each
place is. Each ``/api/locate`` answer then carries a compact ``head`` block the page draws as
rectangles coloured by probability:

* **cells** head: its ``top`` most probable geocells, each with its probability, its rectangle
  (``[south, west, north, east]``, the k-d split's box; the cells tile the sphere) and its
  representative point;
* **flow** head: the ``top`` heaviest cells of its probability map on a ``FLOW_GRID_DEG`` grid
  (:meth:`~geosolver.heads.flow.FlowHead.density_map`), each with its probability mass and box.

``predicted`` is the head's own guess (cells: the top cell's point). Probabilities are rounded
*down* to 6 decimals, so the listed ones sum to at most 1 (the rest of the mass is in cells not
listed). With ``fuse`` the kNN vote itself is fused with the head (``prior=head``: each
neighbour's vote times the head's probability of its place, :mod:`geosolver.prior`); without it
the head is only shown. About 120 bytes of JSON per cell: 20 cells are ~2.5 KB.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from geosolver.errors import ServeError

#: cells (or flow grid cells) listed per answer
HEAD_TOP = 20
#: degrees per side of the flow head's probability grid
FLOW_GRID_DEG = 5.0


def open_head(head: Any, gallery) -> Any:
    """The head of ``--head`` (a directory, or an already loaded head), checked against the gallery:
    one :class:`~geosolver.errors.HeadError` line when it is not a head or was trained on another
    encoder's (or dim's) embeddings."""
    if isinstance(head, (str, os.PathLike)):
        from geosolver.heads.train import load_head  # optional heavy backend (torch): only when a head is served

        head = load_head(os.fspath(head))
    head.check_store(gallery)
    return head


def _floor6(p: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(p, np.float64) * 1e6) / 1e6


class HeadMap:
    """A served head: the ``head`` block of each answer, and the prior of a fused vote.

    Args:
        head: a loaded head (:func:`open_head`).
        fuse: fuse the kNN vote with it (``prior``), or only show it.
        top: cells listed per answer.
    """

    def __init__(self, head: Any, fuse: bool = False, top: int = HEAD_TOP):
        if top < 1:
            raise ServeError(f"head cells per answer must be >= 1, got {top}")
        self.head, self.fuse, self.top = head, bool(fuse), int(top)
        self.bounds = head.cells.bounds() if head.kind == "cells" else None

    @property
    def prior(self) -> Any:
        """What the vote is fused with: the head under ``fuse``, else ``None`` (the plain vote)."""
        return self.head if self.fuse else None

    def describe(self) -> dict:
        return {**self.head.describe(), "fused": self.fuse}

    def blocks(self, emb: np.ndarray) -> list[dict]:
        """The ``head`` block of each embedding ``(n, dim)``."""
        emb = np.asarray(emb, np.float32)
        if self.head.kind == "cells":
            return self._cells_blocks(emb)
        return [self._flow_block(e) for e in emb]

    def _block(self, cells: list[dict], lat: float, lon: float, confidence: float) -> dict:
        return {"kind": self.head.kind, "fused": self.fuse, "weight": self.head.weight,
                "predicted": {"lat": float(lat), "lon": float(lon), "confidence": float(confidence)}, "cells": cells}

    def _cells_blocks(self, emb: np.ndarray) -> list[dict]:
        p = self.head.cell_probs(emb)
        order = np.argsort(-p, axis=1, kind="stable")[:, : self.top]
        c, b = self.head.cells, self.bounds
        out = []
        for i, row in enumerate(order):
            cells = [{"p": float(_floor6(p[i, j])), "bounds": [round(float(x), 4) for x in b[j]],
                      "lat": round(float(c.lat[j]), 4), "lon": round(float(c.lon[j]), 4)} for j in row]
            out.append(self._block(cells, c.lat[row[0]], c.lon[row[0]], p[i, row[0]]))
        return out

    def _flow_block(self, e: np.ndarray) -> dict:
        g, (lat, lon, p) = self.head.guess_and_map(e, step_deg=FLOW_GRID_DEG)  # one set of samples for both
        flat = np.argsort(-p, axis=None, kind="stable")[: self.top]
        h = FLOW_GRID_DEG / 2
        cells = []
        for f in flat:
            i, j = np.unravel_index(f, p.shape)
            cells.append({"p": float(_floor6(p[i, j])), "bounds": [float(lat[i] - h), float(lon[j] - h), float(lat[i] + h), float(lon[j] + h)],
                          "lat": float(lat[i]), "lon": float(lon[j])})
        return self._block(cells, g.lat[0], g.lon[0], g.confidence[0])
