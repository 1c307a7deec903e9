"""The study's head step: both heads trained on the studied encoder's gallery embeddings, then kNN vs
heads vs fused on the test queries — one table (:func:`study_step`)."""

from __future__ import annotations

import os
from pathlib import Path

from geosolver.evaluate import METRIC_COLUMNS, evaluate, markdown_table, row_label
from geosolver.heads.base import HEAD_JSON
from geosolver.heads.config import KINDS, HeadConfig
from geosolver.heads.train import train_head


def study_step(gallery: str | os.PathLike, queries: str | os.PathLike, out: str | os.PathLike, device: str = "auto",
               k: int = 10, head_weight: float = 1.0, exclude_self: bool | str = "auto", progress: bool = False, **head_kw) -> dict:
    """Train a cells and a flow head on ``gallery`` (kept when ``out/head-KIND`` already holds one)
    and evaluate on ``queries``: densest kNN at ``k``, each head alone, each fused with kNN at λ =
    ``head_weight``, and kNN refined inside the cells head's top 5 cells.

    Args:
        gallery, queries: the studied encoder's gallery and test stores.
        out: directory for ``head-cells/``, ``head-flow/`` (the heads) and ``eval-cells/``,
            ``eval-flow/`` (evaluation run directories).
        device: where the heads train and run.
        **head_kw: further :class:`~geosolver.heads.HeadConfig` settings (epochs, hidden, ...).

    Returns:
        ``{"rows": [the table's rows], "markdown": the table, "heads": {kind: directory}}``.
    """
    out = Path(out)
    rows, heads = [], {}
    for kind in KINDS:
        hd = out / f"head-{kind}"
        if not (hd / HEAD_JSON).exists():
            train_head(HeadConfig(gallery=str(gallery), kind=kind, out=str(hd), device=device, **head_kw), progress=progress)
        heads[kind] = hd
        res = evaluate(queries, gallery, strategies=["densest"], ks=[k], head=hd, fuse=("none", "head") if kind == "cells" else ("head",),
                       head_weight=[head_weight], exclude_self=exclude_self, out=out / f"eval-{kind}", plots=False, progress=progress)
        rows += [{**r, "method": row_label(r) if r["prior"] != "head" else f"{row_label(r)} ({kind})"} for r in res["rows"]]
    cols = ["method", *METRIC_COLUMNS]
    return {"rows": rows, "markdown": markdown_table(rows, cols), "heads": {k: str(v) for k, v in heads.items()}}
