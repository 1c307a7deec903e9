"""Resuming a killed run: ``OUT/checkpoint.pt``, and what ``train`` may write into ``--out``.

Every ``save_every`` steps (and at the last step) the main process writes ``OUT/checkpoint.pt``
(temporary name + rename, so a kill never leaves half a checkpoint; it replaces the previous one):

* the trainable weights, the AdamW state and the LR schedule's position;
* the validation history (first, best and last metrics, the best weights so far, a collapse);
* per process: the Python, NumPy and torch (CPU, CUDA) RNG states, the flip generator's state
  and the sampler position (epoch, batches taken) — :class:`~geosolver.train.sampler.SamplerPosition`;
* the length of ``train_log.jsonl`` at that step, the seconds spent, the run's settings.

:func:`check_out` runs before any work: the same command run again in the same ``--out`` resumes
from the checkpoint (on CPU it ends with the same weights as an uninterrupted run); other settings
in that folder, or a folder ``train`` did not write, are refused with one line unless
``--overwrite``. Only ``train``'s own files (:data:`OWN_FILES`) are ever removed.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geosolver.errors import TrainError
from geosolver.files import atomic_write_bytes, jsonable
from geosolver.train.config import TrainConfig, option_name
from geosolver.train.params import restore, snapshot
from geosolver.train.sampler import SamplerPosition

if TYPE_CHECKING:
    from geosolver.train.loop import Trainer

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
#: What ``train`` writes into ``--out`` besides ``config.json`` and ``model/``; ``--overwrite``
#: removes these (and their temporaries) from a folder that holds another training run.
OWN_FILES = (CHECKPOINT, "train_log.jsonl", "target_curve.json", "training.png")
#: Settings that may change between a run and its resumption: they do not change what is computed.
FREE_SETTINGS = ("out", "progress", "num_workers", "save_every", "overwrite")
FORMAT = 1


def settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with the run it resumes, as ``config.json`` holds them."""
    return jsonable({k: v for k, v in asdict(cfg).items() if k not in FREE_SETTINGS})


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``--option (recorded X, now Y)`` for each setting of ``now`` that ``recorded`` does not share."""
    clip = lambda v: (t if len(t := json.dumps(v)) <= 40 else t[:37] + "...")  # noqa: E731
    return [f"{option_name(k)} (recorded {clip(recorded.get(k, '(none)'))}, now {clip(v)})"
            for k, v in now.items() if recorded.get(k, "(none)") != v]


def check_out(cfg: TrainConfig) -> Path | None:
    """Decide what this run does with ``cfg.out``, before any work; returns the checkpoint to resume
    from, or None to start from step 0.

    * missing or empty: a new run;
    * a training run's folder (``config.json`` with ``"command": "train"``) with the same settings:
      resume from its checkpoint (none yet: start over there);
    * with other settings: refused, naming them — unless ``overwrite``, which removes the old run's
      :data:`OWN_FILES` and starts over;
    * anything else (a file, the user's files, another command's output): refused — unless
      ``overwrite`` (for a folder), which writes train's files into it and removes nothing.

    Raises:
        TrainError: one line naming the folder and what is in the way.
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} is a file, not a directory")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names:
        return None
    recorded = _recorded_config(out)
    if recorded is None:
        if cfg.overwrite:
            return None
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
        raise TrainError(f"--out {out} is not a training run's folder (it holds {shown}); pick a new or empty "
                         "folder, or pass --overwrite to write train's files into it")
    diff = differences(recorded, settings(cfg)) if "steps" in recorded else []  # no settings yet: claimed only
    if cfg.overwrite:
        remove_own_files(out)
        return None
    if diff:
        raise TrainError(f"--out {out} holds a training run with other settings: {'; '.join(diff)}; run the same "
                         "command to resume it, pick a new --out, or pass --overwrite to start over there")
    remove_own_files(out, temporaries_only=True)
    ckpt = out / CHECKPOINT
    return ckpt if ckpt.is_file() else None


def _recorded_config(out: Path) -> dict | None:
    """``OUT/config.json`` when it records a ``train`` run, else None."""
    try:
        rec = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("command") == "train" else None


def remove_own_files(out: Path, temporaries_only: bool = False) -> None:
    """Remove :data:`OWN_FILES` from a training run's folder (only their half-written temporaries,
    ``NAME.tmpPID``, with ``temporaries_only``)."""
    for name in (*OWN_FILES, "config.json"):
        for tmp in out.glob(f"{name}.tmp[0-9]*"):
            tmp.unlink(missing_ok=True)
        if not temporaries_only and name != "config.json":
            (out / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# RNG states: Python, NumPy, torch (CPU, CUDA) and one torch.Generator
# ----------------------------------------------------------------------------------------------
def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG state of this process (tensors, tuples and numbers only: ``torch.load(weights_only=True)`` reads it)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["generator"])


def _plain(o: Any) -> Any:
    """``o`` with NumPy scalars as Python numbers (NaN kept), for a ``weights_only`` checkpoint."""
    if isinstance(o, dict):
        return {k: _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    return o.item() if isinstance(o, np.generic) else o


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------
def save_checkpoint(trainer: Trainer, path: Path) -> None:
    """Write ``path`` (main process; every process must call this: it gathers their RNG and sampler states)."""
    from accelerate.utils import gather_object  # the [train] extra; setup() checked it is there

    mine = {"rng": rng_state(trainer.flip_gen), "sampler": asdict(trainer.position)}
    ranks = gather_object([mine])
    if trainer.rt.main:
        h = trainer.history
        state = {
            "format": FORMAT,
            "step": trainer.step,
            "settings": settings(trainer.cfg),
            "train_rows": trainer.train_rows,
            "params": snapshot(trainer.surgery.params),
            "optimizer": trainer.opt.state_dict(),
            "scheduler": trainer.sched.state_dict(),
            "history": {"best_state": h.best_state, "best_step": h.best_step, "initial": _plain(h.initial),
                        "best": _plain(h.best), "last": _plain(h.last), "collapsed": h.collapsed},
            "log_bytes": trainer.train_log.tell(),
            "seconds": time.time() - trainer.t0,
            "ranks": ranks,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getbuffer())
    trainer.rt.accelerator.wait_for_everyone()


def read_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against this run's settings.

    Raises:
        TrainError: unreadable, of another format, or written with other settings.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable file is one line
        raise TrainError(f"cannot read the checkpoint {path} ({type(e).__name__}); delete it to start over, "
                         "or pass --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainError(f"{path} is not a checkpoint this version of geosolver wrote; delete it or pass --overwrite")
    diff = differences(state["settings"], settings(cfg))
    if diff:
        raise TrainError(f"the checkpoint {path} was written with other settings: {'; '.join(diff)}")
    return state


def resume(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Put ``trainer`` where the checkpoint ``state`` left its run (``trainer.t0`` moves back by
    the seconds already spent).

    Raises:
        TrainError: the checkpoint does not fit this run (processes, dataset rows, trained weights).
    """
    rank, world = trainer.rt.rank, trainer.rt.world
    if len(state["ranks"]) != world:
        raise TrainError(f"the checkpoint {path} was written by {len(state['ranks'])} process(es); resume it with as many, not {world}")
    if state["train_rows"] != trainer.train_rows:
        raise TrainError(f"the dataset changed since the checkpoint {path}: {state['train_rows']} training rows then, "
                         f"{trainer.train_rows} now")
    params = trainer.surgery.params
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    if {n: tuple(t.shape) for n, t in state["params"].items()} != shapes:
        raise TrainError(f"the checkpoint {path} holds other trained weights than this model and --train mode")
    restore(params, state["params"])
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    h, saved = trainer.history, state["history"]
    h.best_state, h.best_step, h.collapsed = saved["best_state"], saved["best_step"], saved["collapsed"]
    h.initial, h.best, h.last = saved["initial"], saved["best"], saved["last"]
    trainer.step = state["step"]
    trainer.t0 -= state["seconds"]
    mine = state["ranks"][rank]
    set_rng_state(mine["rng"], trainer.flip_gen)
    trainer.position = SamplerPosition(**mine["sampler"])
