"""Fine-tuning objectives compared on the offline terrain world, same budget for each.

    python benchmarks/finetune.py                                  # gallery 1500 / queries 500 / 300 steps
    python benchmarks/finetune.py --steps 100 --gallery 800 --queries 200 --work /tmp/ft

1. ``terrain.build_world(WORK/train, G gallery tiles, seed 0)`` is the training set *and* the
   evaluation gallery; ``terrain.build_world(WORK/heldout, Q query tiles, seed 1)`` gives the
   evaluation queries (other points, other seed: never seen in training).
2. For each objective (geo-contrastive, distance-consistency, distance-consistency with
   ``sharpen`` 2, both) one ``geosolver.train.train`` run with the same budget: EfficientNet-Lite0
   at the tiles' native 64 px, ``train=projection``, ``cache_trunk``, no flips, same steps,
   batch 64, seed 0 (everything else at the CLI defaults).
3. Base and trained encoders are evaluated identically: gallery + held-out queries embedded with
   ``embed.embed``; ``evaluate.evaluate`` (1-NN and densest k=10, bootstrap 95% CI); paired
   bootstrap CI of the per-query Geoscore difference vs the base model (same queries, same
   resamples); Spearman ρ(similarity, distance), mean pairwise cosine and effective rank of the
   held-out query embeddings from ``analysis.analyze_stores`` (all pairs of the Q queries).

Everything goes through the public API. Scores on the terrain world are NOT comparable with
street-view benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from geosolver.analysis import analyze_stores
from geosolver.data import read_dataset
from geosolver.embed import embed
from geosolver.encoders import load_encoder
from geosolver.evaluate import evaluate
from geosolver.terrain import build_world
from geosolver.train import TrainConfig, train

MODEL = "efficientnet-lite0@64"
#: (label, objective, sharpen)
RUNS = (
    ("geo-contrastive", "geo-contrastive", 1.0),
    ("distance-consistency", "distance-consistency", 1.0),
    ("distance-consistency sharpen 2", "distance-consistency", 2.0),
    ("both", "both", 1.0),
)
#: (strategy, k) pairs reported
SETTINGS = (("nn", 1), ("densest", 10))


def _slug(label: str) -> str:
    return label.replace(" ", "-")


def build_worlds(work: Path, n_gallery: int, n_queries: int) -> tuple[Path, Path]:
    """Training/gallery world (seed 0) and held-out query world (seed 1), built once."""
    train_w, held_w = work / "train", work / "heldout"
    for w, g, q, seed in ((train_w, n_gallery, 0, 0), (held_w, 0, n_queries, 1)):
        if not (w / "world.json").exists():
            t = time.time()
            build_world(w, n_gallery=g, n_queries=q, seed=seed, progress=False, overwrite=True)
            print(f"built {w.name} world ({g} gallery, {q} queries, seed {seed}) in {time.time() - t:.0f}s", flush=True)
    return train_w, held_w


def embed_both(model: str | Path, name: str, train_w: Path, held_w: Path, work: Path) -> tuple[Path, Path]:
    """Embed the gallery (training world) and the held-out queries into WORK/stores/NAME/{gallery,queries}."""
    enc = load_encoder(str(model), device="cpu")
    out = {}
    for which, world, csv in (("gallery", train_w, "gallery.csv"), ("queries", held_w, "queries.csv")):
        table = read_dataset("folder", world, csv=world / csv)
        out[which] = work / "stores" / name / which
        res = embed(table, enc, out[which], batch_size=128, num_workers=0, progress=False,
                    config={"benchmark": "finetune", "model": str(model)})
        if res.rows_embedded:
            print(f"  embedded {name} {which}: {res.rows_embedded} at {res.images_per_s:.0f} img/s", flush=True)
    return out["gallery"], out["queries"]


def train_one(label: str, objective: str, sharpen: float, train_w: Path, work: Path, args) -> tuple[Path, dict]:
    """One fine-tuning run (reused if WORK/runs/SLUG/result.json exists)."""
    out = work / ("runs-final" if args.final else "runs") / _slug(label)
    done = out / "result.json"
    if done.exists():
        info = json.loads(done.read_text())
        if info.get("steps_requested") == args.steps and info.get("final") == args.final:
            print(f"[{label}] reusing {out}", flush=True)
            return out / "model", info
    cfg = TrainConfig(
        out=str(out), root=str(train_w), dataset="folder", csv=str(train_w / "gallery.csv"),
        model=MODEL, objective=objective, sharpen=sharpen, train="projection", cache_trunk=True,
        flip=False, steps=args.steps, batch_size=64, seed=0, device="cpu", progress=False,
        **({"val_fraction": 0.0} if args.final else {}),
    )
    t = time.time()
    res = train(cfg)
    secs = time.time() - t
    info = {
        "label": label, "steps_requested": args.steps, "final": args.final, "steps": res.steps, "best_step": res.best_step,
        "seconds": secs, "initial_metrics": res.initial_metrics, "best_metrics": res.best_metrics,
        "final_metrics": res.final_metrics,
    }
    done.write_text(json.dumps(info, indent=2, default=float) + "\n")
    print(f"[{label}] trained {res.steps} steps in {secs:.0f}s, best step {res.best_step}", flush=True)
    return res.model_dir, info


def per_query(pred_dir: Path) -> dict[tuple[str, int], pd.Series]:
    """Per-query Geoscores by (strategy, k), indexed by query id."""
    p = pd.read_parquet(pred_dir / "predictions.parquet")
    return {(s, k): p[(p.strategy == s) & (p.k == k)].set_index("id")["geoscore"].sort_index() for s, k in SETTINGS}


def paired_ci(a: pd.Series, b: pd.Series, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean of a − b over shared queries and its paired bootstrap 95% percentile interval."""
    ids = a.index.intersection(b.index)
    if len(ids) != len(a) or len(ids) != len(b):
        raise RuntimeError(f"query sets differ: {len(a)} vs {len(b)} queries, {len(ids)} shared")
    d = a.loc[ids].to_numpy(np.float64) - b.loc[ids].to_numpy(np.float64)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=1500, help="training / gallery tiles (default 1500)")
    p.add_argument("--queries", type=int, default=500, help="held-out query tiles (default 500)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default 300)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")), help="torch CPU threads")
    p.add_argument("--final", action="store_true",
                   help="train with val_fraction=0: no validation, the last-step weights are kept "
                        "(default: train's validation split, the best step's weights are kept)")
    p.add_argument("--work", default="/tmp/geosolver-finetune-bench")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    work = Path(args.work)
    train_w, held_w = build_worlds(work, args.gallery, args.queries)

    models: list[tuple[str, Path | str, dict | None]] = [("base", MODEL, None)]
    for label, objective, sharpen in RUNS:
        model_dir, info = train_one(label, objective, sharpen, train_w, work, args)
        models.append((label, model_dir, info))

    evals, query_stores = {}, []
    for label, model, info in models:
        g, q = embed_both(model, ("final-" if args.final and info else "") + _slug(label), train_w, held_w, work)
        query_stores.append(q)
        ev_dir = work / ("eval-final" if args.final else "eval") / _slug(label)
        r = evaluate(q, g, strategies=tuple(s for s, _ in SETTINGS), ks=tuple(sorted({k for _, k in SETTINGS})),
                     out=ev_dir, plots=False, progress=False, bootstrap=args.bootstrap, seed=0)
        evals[label] = {"rows": {(x["strategy"], x["k"]): x for x in r["rows"]}, "per_query": per_query(ev_dir),
                        "oracle": r["references"]["oracle"], "random": r["references"]["random"]}

    labels = [m[0] for m in models]
    an = analyze_stores(query_stores, work / ("analysis-final" if args.final else "analysis"), sample=args.queries, names=labels, progress=False, report=False)

    rows = []
    for label, _, info in models:
        e, a = evals[label], an["encoders"][label]
        row = {"model": label, "train_s": info["seconds"] if info else None,
               "best_step": info["best_step"] if info else None,
               "spearman": a["spearman"], "mean_cos": a["diagnostics"]["mean_cosine"],
               "eff_rank": a["diagnostics"]["effective_rank"]}
        for s, k in SETTINGS:
            m = e["rows"][(s, k)]
            key = f"{s}@{k}"
            row[key] = {"geoscore": m["geoscore"], "ci": m.get("geoscore_ci95"), "median_km": m["median_km"]}
            if label != "base":
                row[key]["delta"] = paired_ci(e["per_query"][(s, k)], evals["base"]["per_query"][(s, k)], args.bootstrap, 0)
        rows.append(row)

    def ci(m: dict) -> str:
        return f"{m['geoscore']:.0f} [{m['ci'][0]:.0f}, {m['ci'][1]:.0f}]" if m.get("ci") else f"{m['geoscore']:.0f}"

    def delta(m: dict) -> str:
        if "delta" not in m:
            return "—"
        d, lo, hi = m["delta"]
        return f"{d:+.0f} [{lo:+.0f}, {hi:+.0f}]"

    ref = evals["base"]
    print(f"\nTerrain world: gallery {args.gallery} tiles (seed 0, also the training set), {args.queries} held-out "
          f"query tiles (seed 1); {MODEL}, train=projection, cached trunk, no flips, {args.steps} steps, batch 64, "
          f"seed 0; kept weights: {'last step (val_fraction 0)' if args.final else 'best validation step'}; total {time.time() - t0:.0f}s. Not comparable with street-view benchmarks.\n")
    print("| model | Geoscore 1-NN [95% CI] | Δ vs base [95% CI] | Geoscore densest k=10 [95% CI] | Δ vs base [95% CI] "
          "| median km (1-NN / densest) | Spearman ρ | mean cos | eff. rank | train s (best step) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        nn, dn = r["nn@1"], r["densest@10"]
        tr = f"{r['train_s']:.0f} ({r['best_step']})" if r["train_s"] is not None else "—"
        print(f"| {r['model']} | {ci(nn)} | {delta(nn)} | {ci(dn)} | {delta(dn)} | {nn['median_km']:.0f} / {dn['median_km']:.0f} "
              f"| {r['spearman']:+.3f} | {r['mean_cos']:.3f} | {r['eff_rank']:.1f} | {tr} |")
    print(f"\nReferences: random gallery location {ref['random']['geoscore']:.0f}, "
          f"oracle (nearest gallery coordinate) {ref['oracle']['geoscore']:.0f}. Δ: paired bootstrap over the same "
          f"{args.queries} queries ({args.bootstrap} resamples). Spearman / mean cos / eff. rank: all pairs of the held-out "
          f"query embeddings (ρ < 0 = similarity falls with distance).")
    if not args.final:
        print("\nTraining-time validation (train's own split of the training world; the saved model is the best step, "
              "step 0 = the base weights kept):\n")
        print("| run | val Geoscore step 0 | best (step) | last step | eff. rank step 0 → last |")
        print("|---|---|---|---|---|")
        for label, _, info in models[1:]:
            i, b, f = info["initial_metrics"], info["best_metrics"], info["final_metrics"]
            print(f"| {label} | {i.get('geoscore', float('nan')):.0f} | {b.get('geoscore', float('nan')):.0f} ({info['best_step']}) "
                  f"| {f.get('geoscore', float('nan')):.0f} | {i.get('effective_rank', float('nan')):.1f} → {f.get('effective_rank', float('nan')):.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
