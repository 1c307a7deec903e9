"""``training.png`` of a run: what its ``train_log.jsonl`` holds, drawn.

:func:`read_train_log` reads the log's ``step`` and ``eval`` records, :func:`loss_series` says what
the loss panel draws (each term weighted as it enters the total), :func:`plot_training` draws the
losses and the validation metrics against the step (matplotlib, ``Agg``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from geosolver.plots import pyplot
from geosolver.train.config import OBJECTIVE_NAMES as OBJECTIVE_ORDER

def read_train_log(log_path: Path) -> tuple[list[dict], list[dict]]:
    """The ``step`` and ``eval`` records of a ``train_log.jsonl``, in order."""
    steps, evals = [], []
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            (steps if rec.get("type") == "step" else evals if rec.get("type") == "eval" else []).append(rec)
    return steps, evals


def loss_series(steps: list[dict], weights: dict[str, float] | None) -> dict[str, list[float]]:
    """What the loss panel of ``training.png`` draws: label → one value per step record.

    ``"total"`` first, then each term **as it enters the total**, ``weight × term``, labelled
    ``"0.1 × distill"`` (``"consistency"`` for a weight of 1), so the terms add up to the total. Without
    ``weights`` (an old log with no ``config.json``) the raw terms, labelled ``"(unweighted)"``.
    NaN is written as null in the log and comes back as NaN.
    """
    num = lambda v: math.nan if v is None else float(v)  # noqa: E731
    out = {"total": [num(r.get("loss")) for r in steps]}
    names = {k for r in steps for k in r.get("parts", {})}
    order = lambda n: (OBJECTIVE_ORDER.index(n) if n in OBJECTIVE_ORDER else len(OBJECTIVE_ORDER), n)  # noqa: E731
    for name in sorted(names, key=order):
        raw = [num(r.get("parts", {}).get(name)) for r in steps]
        if weights is None or name not in weights:
            out[f"{name} (unweighted)"] = raw
        else:
            w = float(weights[name])
            out[name if w == 1 else f"{w:g} × {name}"] = [w * v for v in raw]
    return out


def _run_weights(log_path: Path) -> dict[str, float] | None:
    """The loss weights of the run that wrote ``log_path`` (its ``config.json``), or None."""
    try:
        w = json.loads((Path(log_path).parent / "config.json").read_text()).get("weights")
    except (OSError, ValueError, AttributeError):
        return None
    return w if isinstance(w, dict) else None


def plot_training(log_path: Path, out_png: Path, weights: dict[str, float] | None = None) -> None:
    """``training.png``: training losses (top: the total and each term weighted as it enters the
    total, see :func:`loss_series`) and validation metrics (bottom) against the step.

    ``weights``: the run's loss weights; default: ``weights`` of ``config.json`` next to the log.
    """
    plt = pyplot()
    steps, evals = read_train_log(log_path)
    if weights is None:
        weights = _run_weights(log_path)
    num = lambda v: np.nan if v is None else v  # noqa: E731 — NaN is written as null
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    if steps:
        x = [r["step"] for r in steps]
        for label, ys in loss_series(steps, weights).items():
            if label == "total":
                axes[0].plot(x, ys, label="total", color="k", lw=1)
            else:
                axes[0].plot(x, ys, label=label, lw=0.8)
        axes[0].legend(fontsize=8)
    axes[0].set_ylabel("training loss")
    if evals:
        x = [r["step"] for r in evals]
        if "geoscore" in evals[0]:
            axes[1].plot(x, [num(r["geoscore"]) for r in evals], "o-", color="C2")
        axes[1].set_ylabel("val Geoscore")
        for key, c in (("spearman", "C0"), ("mean_cosine", "C1")):
            axes[2].plot(x, [num(r[key]) for r in evals], "o-", color=c, label=key)
        ax2 = axes[2].twinx()
        ax2.plot(x, [num(r["effective_rank"]) for r in evals], "s--", color="C3", label="effective rank")
        ax2.set_ylabel("effective rank")
        axes[2].legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("Spearman / mean cosine")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
