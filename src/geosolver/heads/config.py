"""The settings of a head training run, torch- and pandas-free (the CLI builds ``geosolver head train``'s options
from them without loading torch)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geosolver.errors import HeadError

if TYPE_CHECKING:  # a type only: the store module imports pandas, and `head train --help` loads this one
    from geosolver.store import EmbeddingStore

KINDS = ("cells", "flow")


def _opt(help: str, **kw: Any) -> dict:
    return {"help": help, **kw}


@dataclass
class HeadConfig:
    """A head training run. Each field's ``metadata["help"]`` is its command-line help."""

    gallery: str = field(metadata=_opt("embedding store to train on (its embeddings and lat/lon; images are never read)"))
    kind: str = field(metadata=_opt("cells: geocell classifier with haversine label smoothing; flow: flow matching on the sphere", choices=KINDS))
    out: str = field(metadata=_opt("output directory (a run directory; rerun the same command to resume)"))
    epochs: int = field(default=30, metadata=_opt("passes over the training rows"))
    batch_size: int = field(default=256, metadata=_opt("embeddings per step"))
    lr: float = field(default=1e-3, metadata=_opt("AdamW learning rate"))
    weight_decay: float = field(default=1e-4, metadata=_opt("AdamW weight decay"))
    hidden: int = field(default=512, metadata=_opt("hidden width (cells: 0 = a linear classifier)"))
    val_fraction: float = field(default=0.1, metadata=_opt("share of rows held out for validation (best-step selection)"))
    max_val: int = field(default=2000, metadata=_opt("at most this many validation rows"))
    val_every: int = field(default=1, metadata=_opt("validate every N epochs (and after the last step)"))
    device: str = field(default="auto", metadata=_opt("auto, cpu, cuda, cuda:1, ..."))
    seed: int = field(default=0, metadata=_opt("seed of the split, the batch order, the initialisation and the noise"))
    save_every: int = field(default=200, metadata=_opt("write the resumable state every N steps"))
    max_per_cell: int = field(default=100, metadata=_opt("cells: at most this many training points per geocell (cells hold N/2..N)"))
    tau_km: float = field(default=75.0, metadata=_opt("cells: label-smoothing scale τ in km"))
    blocks: int = field(default=3, metadata=_opt("flow: residual blocks of the velocity field"))
    samples: int = field(default=128, metadata=_opt("flow: samples per query when predicting"))
    ode_steps: int = field(default=16, metadata=_opt("flow: midpoint steps of the sampler"))
    kde_km: float = field(default=100.0, metadata=_opt("flow: kernel width (km) of the density / mode"))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HeadError(f"unknown head kind {self.kind!r}; use one of {', '.join(KINDS)}")
        for name in ("epochs", "batch_size", "max_val", "val_every", "save_every", "max_per_cell", "blocks", "samples", "ode_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (2 if name == "max_per_cell" else 1):
                raise HeadError(f"{name} must be an integer >= {2 if name == 'max_per_cell' else 1}, got {v!r}")
        for name in ("lr", "tau_km", "kde_km"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise HeadError(f"{name} must be a finite number > 0, got {v!r}")
        if not (0 < self.val_fraction < 1):
            raise HeadError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.hidden < 0 or self.weight_decay < 0 or self.seed < 0:
            raise HeadError("hidden, weight_decay and seed must be >= 0")

    def fingerprint(self, store: EmbeddingStore) -> dict:
        """What a resumed run must share with the interrupted one: every setting that shapes the
        weights, and the gallery's identity (rows, encoder, shard checksums)."""
        shaping = {k: v for k, v in asdict(self).items() if k not in ("out", "device", "save_every", "gallery")}
        shards = [s.get("sha256") for s in store.manifest.get("shards", [])]
        gallery = {"rows": len(store), "dim": store.dim, "encoder": store.encoder,
                   "shards_sha256": hashlib.sha256(json.dumps(shards).encode()).hexdigest()}
        return {"config": shaping, "gallery": gallery}
