"""What every location head shares: the loaded-head base class, its guess, the head directory's
files (written atomically through :class:`~geosolver.rundir.RunDir`) and the checks made when
one is opened or applied to a store."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from geosolver.errors import HeadError
from geosolver.files import atomic_write_bytes
from geosolver.prior import check_weight
from geosolver.store import EmbeddingStore, encoder_compatible

#: the head directory: head.json (what it is), model.pt (the best weights), cells.npz (cells only)
HEAD_JSON, MODEL_PT, STATE_PT = "head.json", "model.pt", "state.pt"
HEAD_FORMAT_VERSION = 1


class HeadGuess(NamedTuple):
    """A head's own answer for each query: ``(n,)`` lat, lon (degrees) and a confidence in [0, 1]
    (cells: the top cell's probability; flow: the share of samples near the mode)."""

    lat: np.ndarray
    lon: np.ndarray
    confidence: np.ndarray


class Head:
    """A trained location head: a torch model on L2-normalised embeddings plus its ``head.json``.

    Every head is a :class:`~geosolver.prior.LocationPrior` (``weight``, ``probabilities``,
    ``describe``) and answers on its own with :meth:`predict`.
    """

    kind = ""

    def __init__(self, model: torch.nn.Module, info: dict, weight: float = 1.0, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.info = info
        self.weight = check_weight(weight)
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def encoder(self) -> dict:
        return dict(self.info["encoder"])

    def check_store(self, store: EmbeddingStore) -> None:
        """Refuse a store whose embeddings come from another encoder or have another dim."""
        if store.dim != self.dim:
            raise HeadError(f"head {self.info.get('path')} was trained on dim-{self.dim} embeddings; {store.path} has dim {store.dim}")
        ok, why = encoder_compatible(self.encoder, store.encoder)
        if not ok:
            raise HeadError(f"head {self.info.get('path')} was trained on another encoder's embeddings than {store.path} ({why})")

    def _embeddings(self, emb: np.ndarray) -> np.ndarray:
        e = np.asarray(emb, np.float32)
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise HeadError(f"head {self.info.get('path')} needs embeddings of shape (n, {self.dim}); got {np.shape(emb)}")
        return e

    @torch.no_grad()
    def _batched(self, emb: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], batch: int = 4096) -> np.ndarray:
        """``fn`` over batches of ``emb`` on the head's device, concatenated as float64 numpy."""
        e = self._embeddings(emb)
        out = [fn(torch.from_numpy(e[s : s + batch]).to(self.device)).cpu().numpy() for s in range(0, len(e), batch)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0,))

    def predict(self, emb: np.ndarray) -> HeadGuess:  # pragma: no cover - each kind overrides
        raise NotImplementedError

    def probabilities(self, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def with_weight(self, weight: float) -> "Head":
        """This head as a prior of weight λ = ``weight`` (same model, no copy)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.weight = check_weight(weight)
        return other

    def describe(self) -> dict:
        return {"prior": "head", "kind": self.kind, "weight": self.weight, "path": self.info.get("path"),
                "trained_on": self.info.get("gallery"), "best_step": self.info.get("best_step")}


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a temporary file and a rename (a kill never leaves half a file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load`` of a file this package wrote; a damaged one is one :class:`HeadError` line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HeadError(f"{path} is missing") from None
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError / zipfile errors for damage
        raise HeadError(f"{path} is damaged and cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None


def read_head_json(path: str | os.PathLike) -> dict:
    """``head.json`` of a head directory, checked; :class:`HeadError` naming what is wrong."""
    d = Path(path)
    if not d.is_dir():
        raise HeadError(f"head directory {d} does not exist")
    p = d / HEAD_JSON
    if not p.exists():
        hint = " (training did not finish: run `geosolver head train` again with the same options to resume)" if (d / STATE_PT).exists() else ""
        raise HeadError(f"{d} is not a trained head: no {HEAD_JSON}{hint}")
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadError(f"{p} is damaged: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format_version") != HEAD_FORMAT_VERSION or info.get("kind") not in ("cells", "flow"):
        raise HeadError(f"{p} is not a geosolver head (format_version {HEAD_FORMAT_VERSION}, kind cells or flow)")
    for key in ("dim", "encoder", "model"):
        if key not in info:
            raise HeadError(f"{p} is damaged: no {key!r}")
    info["path"] = str(d)
    return info
