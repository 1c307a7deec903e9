"""PROXY benchmark: location heads (geocells, flow on the sphere) vs kNN, and fused with it, on the
offline terrain world — replicates × both splits × two feature extractors.

    python benchmarks/heads.py --out /tmp/heads-bench                  # 5 replicates, both splits (~35 min on 2 cores at load 13)
    python benchmarks/heads.py --replicates 1 --gallery 800 --queries 100 --out /tmp/heads-smoke
    python benchmarks/heads.py --table-only /tmp/heads-bench           # rebuild the tables from the run JSONs

* Worlds and stores: replicate ``r`` builds the worlds of ``benchmarks/finetune.py`` (``random``:
  gallery world seed 2r, a separate query world seed 2r+1; ``held-out-cells``: one world, seed 2r,
  whose queries lie only in 2° cells the gallery never covers) and embeds them once per model
  (EfficientNet-Lite0 at 64 px, the colour histogram); both are cached under ``--out``.
* Heads: ``geosolver.heads.train_head`` on the gallery store's embeddings (CPU, seed r): a cells
  head (≤ ``--max-per-cell`` training points per geocell, τ 75 km) and a small flow head (width
  64, 2 blocks, 32 samples × 6 midpoint steps: sized for a 2-core CPU, far below PLONK's), for
  the ``--head-models`` (default EfficientNet-Lite0); the other models (the histogram) give
  their kNN row as the baseline reference.
* Methods, all through ``evaluate.evaluate`` (one kNN search per head): kNN = densest k=10;
  cells = the head's top cell point; cells+refine = densest k=10 among the neighbours inside the
  head's 5 best cells; flow = the densest of its samples; kNN+cells / kNN+flow = densest k=10
  with every neighbour's vote × (head probability of its place + 1e-4)^λ, λ = 1.
* Δ vs kNN (same model, split): pooled over replicates, 95 % CI by a stratified paired bootstrap
  of the queries (``finetune.pooled_bootstrap``); ``↑n``/``↓n``: replicates whose own CI is above /
  below zero. Error bands: share of queries per error band, pooled.

PROXY: 64-px terrain tiles, not street-view photos; Geoscores here are NOT comparable with
OSV5M and say only how the methods rank on a world where location is visible in the pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from finetune import BAND_LABELS, build_worlds, embed_pair, error_bands, pooled_bootstrap, slug  # noqa: E402

SPLITS = ("random", "held-out-cells")
MODELS = ("efficientnet-lite0@64", "histogram")
#: method → (strategy, prior) in evaluate's predictions.parquet, and which head's run holds it
METHODS = {
    "kNN densest k=10": ("cells", "densest", "none"),
    "cells": ("cells", "head-cells", "none"),
    "cells+refine": ("cells", "densest", "refine"),
    "flow": ("flow", "head-flow", "none"),
    "kNN+cells λ=1": ("cells", "densest", "head"),
    "kNN+flow λ=1": ("flow", "densest", "head"),
}
BASE = "kNN densest k=10"


def head_config(kind: str, gallery: Path, out: Path, rep: int, args) -> "HeadConfig":  # noqa: F821
    from geosolver.heads import HeadConfig

    common = dict(gallery=str(gallery), kind=kind, out=str(out), device="cpu", seed=rep, batch_size=128, max_val=200)
    if kind == "cells":
        return HeadConfig(**common, epochs=args.epochs, hidden=256, max_per_cell=args.max_per_cell, val_every=max(1, args.epochs // 3))
    return HeadConfig(**common, epochs=args.flow_epochs, hidden=64, blocks=2, samples=32, ode_steps=6, kde_km=150.0,
                      val_every=max(1, args.flow_epochs // 2), lr=2e-3)


def run_one(args, out: Path, model: str, split: str, rep: int) -> dict:
    """Train both heads on one (model, split, replicate) and evaluate every method; cached as JSON."""
    from geosolver.evaluate import evaluate
    from geosolver.heads import train_head

    path = out / "runs" / slug(model) / split / f"r{rep}.json"
    sig = {"gallery": args.gallery, "queries": args.queries, "epochs": args.epochs, "flow_epochs": args.flow_epochs,
           "max_per_cell": args.max_per_cell}
    if path.exists() and json.loads(path.read_text()).get("signature") == sig:
        return json.loads(path.read_text())
    work = out / "work"
    g_w, q_w, _, _ = build_worlds(work, split, rep, args.gallery, args.queries)
    stores = work / "stores" / slug(model) / split / f"r{rep}"
    if (stores / "queries" / "manifest.json").exists():
        g, q, embed_s = stores / "gallery", stores / "queries", 0.0
    else:
        g, q, embed_s = embed_pair(model, g_w, q_w, stores)
    res: dict = {"model": model, "split": split, "replicate": rep, "signature": sig, "embed_s": embed_s, "train": {}}
    preds = {}
    if model not in args.head_models.split(","):  # a reference: its kNN row only
        r = evaluate(q, g, strategies=["densest"], ks=[10], out=work / "eval" / slug(model) / split / f"r{rep}" / "knn",
                     plots=False, progress=False, bootstrap=0, seed=rep)
        res["references"] = {k: r["references"][k]["geoscore"] for k in ("random", "oracle")}
        p = pd.read_parquet(work / "eval" / slug(model) / split / f"r{rep}" / "knn" / "predictions.parquet")
        sel = p[(p.strategy == "densest") & (p.prior == "none")].sort_values("id")
        res["per_query"] = {BASE: {"geoscore": sel["geoscore"].tolist(), "km": sel["km"].tolist()}}
        res["ids"] = sel["id"].astype(str).tolist()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
        print(f"{model} {split} r{rep}: kNN densest k=10 {np.mean(sel['geoscore']):.0f} (reference)", flush=True)
        return res
    for kind in ("cells", "flow"):
        hd = work / "heads" / slug(model) / split / f"r{rep}" / kind
        if (hd / "head.json").exists():
            import shutil

            shutil.rmtree(hd)  # the benchmark's own scratch head from an earlier, different run
        t = time.time()
        hr = train_head(head_config(kind, g, hd, rep, args), progress=False)
        res["train"][kind] = {"seconds": time.time() - t, "rate_emb_per_s": hr.rate, "steps": hr.steps, "best_step": hr.best_step}
        ev = work / "eval" / slug(model) / split / f"r{rep}" / kind
        t = time.time()
        r = evaluate(q, g, strategies=["densest"], ks=[10], head=hd, fuse=("none", "head"), head_weight=[1.0],
                     refine_top=5, out=ev, plots=False, progress=False, bootstrap=0, seed=rep)
        res["train"][kind]["eval_s"] = time.time() - t
        res["references"] = {k: r["references"][k]["geoscore"] for k in ("random", "oracle")}
        preds[kind] = pd.read_parquet(ev / "predictions.parquet")
    ids = None
    res["per_query"] = {}
    for name, (kind, strategy, prior) in METHODS.items():
        p = preds[kind]
        sel = p[(p.strategy == strategy) & (p.prior == prior)].sort_values("id")
        ids = sel["id"].astype(str).tolist() if ids is None else ids
        if sel["id"].astype(str).tolist() != ids:
            raise RuntimeError(f"{name}: query ids differ from the other methods'")
        res["per_query"][name] = {"geoscore": sel["geoscore"].tolist(), "km": sel["km"].tolist()}
    res["ids"] = ids
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    print(f"{model} {split} r{rep}: " + ", ".join(f"{n} {np.mean(v['geoscore']):.0f}" for n, v in res["per_query"].items())
          + f"  (train cells {res['train']['cells']['seconds']:.0f}s, flow {res['train']['flow']['seconds']:.0f}s)", flush=True)
    return res


def tables(runs: list[dict], n_boot: int = 2000) -> str:
    lines = ["PROXY (terrain world, not street view). Geoscore: mean over replicates of each replicate's mean; "
             "Δ vs kNN densest k=10: pooled paired bootstrap 95 % CI; ↑n/↓n replicates clear of zero.", ""]
    lines += ["| model | split | method | Geoscore | Δ vs kNN [95 % CI] | reps ↑/↓ | median km |", "|---|---|---|---:|---|---|---:|"]
    bands = ["", "Error bands (share of queries, pooled over replicates):", "",
             "| model | split | method | " + " | ".join(f"{b} km" for b in BAND_LABELS) + " |", "|---|---|---|" + "---:|" * len(BAND_LABELS)]
    for model in MODELS:
        for split in SPLITS:
            rs = [r for r in runs if r["model"] == model and r["split"] == split]
            if not rs:
                continue
            for ref in ("random", "oracle"):
                lines.append(f"| {model} | {split} | *{ref} reference* | {np.mean([r['references'][ref] for r in rs]):.0f} | | | |")
            for name in [m for m in METHODS if m in rs[0]["per_query"]]:
                gs = [np.mean(r["per_query"][name]["geoscore"]) for r in rs]
                med = np.median(np.concatenate([r["per_query"][name]["km"] for r in rs]))
                if name == BASE:
                    delta, reps = "—", ""
                else:
                    d = pooled_bootstrap([np.subtract(r["per_query"][name]["geoscore"], r["per_query"][BASE]["geoscore"]) for r in rs], n_boot)
                    clear = d["lo"] > 0 or d["hi"] < 0
                    delta = f"{'**' if clear else ''}{d['mean']:+.0f} [{d['lo']:+.0f}, {d['hi']:+.0f}]{'**' if clear else ''}"
                    reps = f"↑{d['above']} ↓{d['below']} of {d['n']}"
                lines.append(f"| {model} | {split} | {name} | {np.mean(gs):.0f} | {delta} | {reps} | {med:.0f} |")
                b = np.sum([error_bands(r["per_query"][name]["km"]) for r in rs], axis=0)
                bands.append(f"| {model} | {split} | {name} | " + " | ".join(f"{100 * x / b.sum():.0f} %" for x in b) + " |")
    rates = [(r["model"], k, v["rate_emb_per_s"]) for r in runs for k, v in r["train"].items() if v.get("rate_emb_per_s")]
    foot = ["", "Head training rate on this CPU (embeddings/s, optimiser steps only, median over runs): "
            + ", ".join(f"{k} on {m}: {np.median([x for mm, kk, x in rates if mm == m and kk == k]):.0f}"
                        for m in MODELS for k in ("cells", "flow") if any(mm == m and kk == k for mm, kk, _ in rates))]
    return "\n".join(lines + bands + foot)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/geosolver-heads-bench")
    p.add_argument("--replicates", type=int, default=5)
    p.add_argument("--splits", default=",".join(SPLITS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--head-models", default=MODELS[0], help="models whose heads are trained; the others give their kNN row as a reference")
    p.add_argument("--gallery", type=int, default=1500)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--epochs", type=int, default=15, help="cells head epochs")
    p.add_argument("--flow-epochs", type=int, default=16)
    p.add_argument("--max-per-cell", type=int, default=40)
    p.add_argument("--table-only", default=None, metavar="OUT")
    args = p.parse_args(argv)
    if args.table_only:
        runs = [json.loads(f.read_text()) for f in sorted(Path(args.table_only, "runs").rglob("r*.json"))]
        print(tables(runs))
        return
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.time()
    runs = [run_one(args, out, m, s, r) for r in range(args.replicates) for s in args.splits.split(",") for m in args.models.split(",")]
    md = tables(runs)
    (out / "tables.md").write_text(md + "\n")
    print(f"\n{md}\n\n({time.time() - t0:.0f}s; gallery {args.gallery}, queries {args.queries}, {args.replicates} replicates)")


if __name__ == "__main__":
    sys.exit(main())
