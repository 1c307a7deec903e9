"""Learned location heads on stored embeddings, fused with the kNN vote.

Two heads, trained from an :class:`~geosolver.store.EmbeddingStore`'s embeddings and
coordinates alone (``geosolver head train``, :func:`train_head`):

* ``cells`` (:mod:`geosolver.heads.cells`): balanced geocells, a classifier with haversine label
  smoothing, the top cell's representative point, optional kNN refinement inside the top cells;
* ``flow`` (:mod:`geosolver.heads.flow`): conditional flow matching on the sphere, the densest
  of its samples, and a probability map.

A loaded head (:func:`load_head`) answers on its own (``head.predict(emb)``) and is a
:class:`~geosolver.prior.LocationPrior`: ``Geolocator.locate_embeddings(prior=head)`` and
``geosolver evaluate --head DIR --fuse none,head`` multiply each neighbour's vote by the head's
probability of its place, to the power λ (``head.with_weight(λ)``; λ = 0 is the plain vote).
:func:`geosolver.heads.study.study_step` trains both and evaluates kNN vs heads vs fused.

This package imports torch; nothing else in Geosolver imports it at module level.
"""

import importlib

from geosolver.heads.config import KINDS, HeadConfig

#: public name → the torch-using module that defines it (imported on first use, so that
#: ``geosolver.heads.config`` — what the CLI parser needs — loads without torch)
_LAZY = {
    "Head": "base", "HeadGuess": "base", "CellsHead": "cells", "Geocells": "cells", "smooth_targets": "cells",
    "FlowHead": "flow", "HeadResult": "train", "load_head": "train", "train_head": "train", "study_step": "study",
}
__all__ = ["KINDS", "HeadConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:  # optional heavy backend (torch): loaded when a head is trained or used
        return getattr(importlib.import_module(f"geosolver.heads.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'geosolver.heads' has no attribute {name!r}")
