"""Distance-aware fine-tuning of image encoders for retrieval geolocation.

>>> from geosolver.train import TrainConfig, train                       # doctest: +SKIP
>>> res = train(TrainConfig(out="runs/dc", root="data/ds", csv="data/ds/metadata.csv",
...                         model="streetclip", objective="distance-consistency"))  # doctest: +SKIP
>>> res.model_dir                                                        # doctest: +SKIP

Modules: :mod:`.objectives` (loss functions), :mod:`.sampler` (same-cell batches),
:mod:`.params` (what is trained, LoRA), :mod:`.trunk` (frozen-trunk split), :mod:`.pixels`
(decoding, caches, batches), :mod:`.validate` (validation metrics, collapse stop),
:mod:`.loop` (the run).
"""

from geosolver.train.loop import OBJECTIVE_PRESETS, TrainConfig, TrainResult, fit_target_curve, train
from geosolver.train.objectives import ObjectiveWeights, TargetCurve
from geosolver.train.params import TRAIN_MODES, TrainError, TrainSetupError
from geosolver.train.sampler import CellGroupBatchSampler
from geosolver.train.validate import CollapseError

__all__ = [
    "OBJECTIVE_PRESETS",
    "TRAIN_MODES",
    "CellGroupBatchSampler",
    "CollapseError",
    "ObjectiveWeights",
    "TargetCurve",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainSetupError",
    "fit_target_curve",
    "train",
]
