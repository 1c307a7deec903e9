"""Distance-aware fine-tuning of image encoders for retrieval geolocation.

>>> from geosolver.train import TrainConfig, train                       # doctest: +SKIP
>>> res = train(TrainConfig(out="runs/dc", root="data/ds", csv="data/ds/metadata.csv",
...                         model="streetclip", objective="distance-consistency"))  # doctest: +SKIP
>>> res.model_dir                                                        # doctest: +SKIP

Modules: :mod:`.config` (every setting, and the ``geosolver train`` options derived from it),
:mod:`.objectives` (loss functions), :mod:`.sampler` (same-cell batches), :mod:`.params` (what is
trained, LoRA, model surgery), :mod:`.trunk` (frozen-trunk split), :mod:`.pixels` (decoding, caches, batches),
:mod:`.validate` (validation metrics, collapse stop), :mod:`.checkpoint` (resuming a killed run,
what ``--out`` may be), :mod:`.plots` (``training.png``), :mod:`.loop` (the run, in stages).

The names below are imported on first use, so ``geosolver.train.config`` (the CLI's parser)
loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from geosolver.errors import CollapseError, TrainError, TrainSetupError

if TYPE_CHECKING:
    from geosolver.train.config import OBJECTIVE_NAMES, OBJECTIVE_PRESETS, TRAIN_MODES, ObjectiveWeights, TrainConfig
    from geosolver.train.loop import TrainResult, fit_target_curve, train
    from geosolver.train.objectives import TargetCurve
    from geosolver.train.sampler import CellGroupBatchSampler

_LAZY = {
    "OBJECTIVE_NAMES": "config",
    "OBJECTIVE_PRESETS": "config",
    "TRAIN_MODES": "config",
    "ObjectiveWeights": "config",
    "TrainConfig": "config",
    "TrainResult": "loop",
    "fit_target_curve": "loop",
    "train": "loop",
    "TargetCurve": "objectives",
    "CellGroupBatchSampler": "sampler",
}

__all__ = sorted([*_LAZY, "CollapseError", "TrainError", "TrainSetupError"])


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"geosolver.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'geosolver.train' has no attribute {name!r}")
