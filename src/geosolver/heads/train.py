"""Training a location head from a store's embeddings and coordinates (never its images).

:class:`HeadConfig` is the single source of truth (``geosolver head train`` derives its options
from the fields' metadata); :func:`train_head` runs it and returns a :class:`HeadResult`.

* **Split**: a seeded ``val_fraction`` of the store's rows (at most ``max_val``) is held out for
  validation; the rest trains. Validation = mean Geoscore of the head's own guesses on them,
  every ``val_every`` epochs and after the last step; the best step's weights are kept (``model.pt``).
* **Determinism and resume**: the batch order of epoch ``e`` is a permutation seeded by
  ``(seed, e)`` and each step's noise (flow) comes from a generator seeded by ``(seed, step)``, so
  the run is a function of the config alone. Every ``save_every`` steps (and at each validation)
  ``state.pt`` (weights, optimiser, step, best so far) is written atomically; rerunning the same
  command on the same ``--out`` continues from it and ends with the same weights as an
  uninterrupted run (dropout masks included: the global torch seed is set per step too). A different config or gallery is refused, naming the difference.
* **Outputs** (``--out``, a :class:`~geosolver.rundir.RunDir`): ``config.json``, ``head.json``
  (kind, encoder identity, dim, settings, validation history, best step), ``model.pt`` and, for
  cells, ``cells.npz``. ``state.pt`` stays (it lets a finished run be inspected); an ``--out``
  holding a finished head is never overwritten.
"""

from __future__ import annotations

import math
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geosolver.progress import tqdm

from geosolver.encoders.base import resolve_device
from geosolver.errors import EncoderError, HeadError, StoreError
from geosolver.files import atomic_write_json
from geosolver.geo import geoscore, haversine, latlon_to_xyz
from geosolver.heads.base import HEAD_FORMAT_VERSION, HEAD_JSON, MODEL_PT, STATE_PT, Head, load_torch, read_head_json, save_torch
from geosolver.heads.config import KINDS, HeadConfig
from geosolver.heads.cells import CellsHead, CellsModel, Geocells, smooth_targets
from geosolver.heads.flow import FlowHead, VelocityField, flow_loss
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore

CELLS_NPZ = "cells.npz"


@dataclass
class HeadResult:
    """What :func:`train_head` did: where the head is, its best validation step and score, timing."""

    out: Path
    kind: str
    steps: int
    best_step: int
    best_val_geoscore: float
    seconds: float
    resumed_from: int
    n_train: int
    n_val: int
    rate: float | None  #: training embeddings per second in this session, validation excluded (None: nothing left to train)


def _open_gallery(path: str) -> EmbeddingStore:
    try:
        store = EmbeddingStore(path)
    except (StoreError, FileNotFoundError, OSError) as e:
        raise HeadError(f"cannot open gallery store {path}: {e}") from None
    if len(store) < 10:
        raise HeadError(f"gallery {path} has {len(store)} rows: too few to train a head (need >= 10)")
    return store


def _split(n: int, cfg: HeadConfig) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([cfg.seed, 1]).permutation(n)
    n_val = max(1, min(cfg.max_val, int(round(cfg.val_fraction * n))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def build_model(cfg: HeadConfig, dim: int, n_cells: int = 0) -> torch.nn.Module:
    """The untrained model of a config (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    if cfg.kind == "cells":
        return CellsModel(dim, n_cells, hidden=cfg.hidden)
    return VelocityField(dim, hidden=cfg.hidden, blocks=cfg.blocks)


def _as_head(cfg: HeadConfig, model: torch.nn.Module, info: dict, cells: Geocells | None, device: str) -> Head:
    if cfg.kind == "cells":
        return CellsHead(model, cells, info, device=device)
    return FlowHead(model, info, device=device, n_samples=cfg.samples, steps=cfg.ode_steps, kde_km=cfg.kde_km, seed=cfg.seed)


def _validate(head: Head, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> float:
    g = head.predict(emb)
    head.model.train()
    return float(geoscore(haversine(lat, lon, g.lat, g.lon, check=False)).mean())


def train_head(cfg: HeadConfig, progress: bool | None = None) -> HeadResult:
    """Train (or resume) the head ``cfg`` describes; see the module docstring.

    Raises:
        HeadError: bad settings, an unreadable gallery, an ``--out`` holding a finished head or
            the state of another run, a damaged state file.
    """
    t0 = time.time()
    out = Path(cfg.out)
    if (out / HEAD_JSON).exists():
        raise HeadError(f"{out} already holds a trained head ({HEAD_JSON}); choose another --out (nothing is overwritten)")
    store = _open_gallery(cfg.gallery)
    try:
        device = resolve_device(cfg.device)
    except EncoderError as e:
        raise HeadError(str(e)) from None
    fp = cfg.fingerprint(store)
    state = None
    if (out / STATE_PT).exists():
        state = load_torch(out / STATE_PT)
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise HeadError(f"{out / STATE_PT} is damaged: not a head training state")
        if state["fingerprint"] != fp:
            diff = _differs(state["fingerprint"], fp)
            raise HeadError(f"{out} holds the state of another head training ({diff}); choose another --out or rerun with the same options")
    run = RunDir(out, "head train")
    run.write_config({**asdict(cfg), "fingerprint": fp})

    lat, lon = store.coords()
    emb = store.embeddings()
    tr, va = _split(len(store), cfg)
    cells = Geocells.build(lat[tr], lon[tr], cfg.max_per_cell, seed=cfg.seed) if cfg.kind == "cells" else None
    model = build_model(cfg, store.dim, len(cells) if cells is not None else 0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(tr) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    step, best, log = 0, {"step": 0, "geoscore": -1.0, "model": None}, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best, log = int(state["step"]), state["best"], list(state["log"])
    resumed_from = step
    info = {"format_version": HEAD_FORMAT_VERSION, "kind": cfg.kind, "dim": store.dim, "encoder": store.encoder,
            "gallery": str(store.path.resolve()), "model": asdict(cfg), "path": str(out)}

    E = torch.from_numpy(emb).to(device)
    if cfg.kind == "cells":
        cell_of = torch.from_numpy(cells.cell_of(lat, lon)).to(device)
        c_lat, c_lon = (torch.from_numpy(a).to(device) for a in (cells.lat, cells.lon))
    LAT, LON = (torch.from_numpy(a.copy()).to(device) for a in (lat, lon))
    X = torch.from_numpy(latlon_to_xyz(lat, lon)).float().to(device)

    def save_state() -> None:
        save_torch(out / STATE_PT, {"fingerprint": fp, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                                    "best": best, "log": log})

    model.train()
    show = sys.stderr.isatty() if progress is None else progress
    t_train, val_seconds = time.time(), 0.0
    with tqdm(total=total, initial=step, desc=f"head {cfg.kind}", unit="step", disable=not show) as bar:
        while step < total:
            epoch, pos = divmod(step, steps_per_epoch)
            order = tr[np.random.default_rng([cfg.seed, 2, epoch]).permutation(len(tr))]
            idx = torch.from_numpy(order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]).to(device)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # the flow's noise and t
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a resumed run draws the same masks
            if cfg.kind == "cells":
                target = smooth_targets(LAT[idx], LON[idx], c_lat, c_lon, cell_of[idx], cfg.tau_km).float()
                loss = -(target * torch.log_softmax(model(E[idx]), dim=1)).sum(1).mean()
            else:
                loss = flow_loss(model, E[idx], X[idx], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if (step % steps_per_epoch == 0 and (epoch + 1) % cfg.val_every == 0) or step == total:
                t_val = time.time()
                score = _validate(_as_head(cfg, model, info, cells, str(device)), emb[va], lat[va], lon[va])
                val_seconds += time.time() - t_val
                log.append({"step": step, "epoch": epoch + 1, "loss": float(loss.detach()), "val_geoscore": score})
                if score > best["geoscore"]:
                    best = {"step": step, "geoscore": score, "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                bar.set_postfix(val=f"{score:.0f}", best=f"{best['geoscore']:.0f}")
                save_state()
            elif step % cfg.save_every == 0:
                save_state()
    seconds_training = time.time() - t_train - val_seconds  # optimiser steps only: the rate is the training rate
    save_state()
    save_torch(out / MODEL_PT, best["model"])
    if cells is not None:
        np.savez(out / (CELLS_NPZ + ".tmp.npz"), **cells.arrays())
        (out / (CELLS_NPZ + ".tmp.npz")).replace(out / CELLS_NPZ)
    done = total - resumed_from
    rate = done * cfg.batch_size / seconds_training if done else None
    info.update({"best_step": best["step"], "best_val_geoscore": best["geoscore"], "steps": total, "n_train": int(len(tr)),
                 "n_val": int(len(va)), "n_cells": len(cells) if cells is not None else None, "log": log,
                 "train_rate_emb_per_s": rate})
    info.pop("path")
    atomic_write_json(out / HEAD_JSON, info)  # last: its presence marks a finished head
    return HeadResult(out, cfg.kind, total, best["step"], best["geoscore"], time.time() - t0, resumed_from, len(tr), len(va), rate)


def _differs(a: dict, b: dict) -> str:
    keys = [f"{k}: {a['config'].get(k)!r} then, {v!r} now" for k, v in b["config"].items() if a["config"].get(k) != v]
    if a["gallery"] != b["gallery"]:
        keys.append("another gallery store")
    return "; ".join(keys) or "different settings"


def load_head(path: str, device: str = "cpu", weight: float = 1.0, **kw: Any) -> Head:
    """A trained head from its directory (``head.json``, ``model.pt``, ``cells.npz``).

    Args:
        path: the ``--out`` of ``geosolver head train``.
        device: where the head runs.
        weight: λ when the head is used as a prior.
        **kw: flow only: ``n_samples``, ``steps``, ``kde_km``, ``seed`` (default: the training config's).

    Raises:
        HeadError: not a head directory, a damaged file.
    """
    info = read_head_json(path)
    cfg_d = info["model"]
    try:
        cfg = HeadConfig(**{f.name: cfg_d[f.name] for f in fields(HeadConfig) if f.name in cfg_d})
    except TypeError as e:
        raise HeadError(f"{Path(path) / HEAD_JSON} is damaged: {e}") from None
    weights = load_torch(Path(path) / MODEL_PT)
    cells = None
    if cfg.kind == "cells":
        try:
            with np.load(Path(path) / CELLS_NPZ) as z:
                cells = Geocells.from_arrays(z)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise HeadError(f"{Path(path) / CELLS_NPZ} is missing or damaged ({type(e).__name__})") from None
    model = build_model(cfg, int(info["dim"]), len(cells) if cells is not None else 0)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise HeadError(f"{Path(path) / MODEL_PT} does not fit its head.json ({str(e).splitlines()[0][:160]})") from None
    if cfg.kind == "cells":
        return CellsHead(model, cells, info, weight=weight, device=device)
    flow_kw = {"n_samples": cfg.samples, "steps": cfg.ode_steps, "kde_km": cfg.kde_km, "seed": cfg.seed, **kw}
    return FlowHead(model, info, weight=weight, device=device, **flow_kw)
