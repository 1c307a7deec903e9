"""Fine-tuning objectives compared on the offline terrain world: replicates, two splits, two models,
pooled paired differences against the base encoder.

    python benchmarks/finetune.py --out /tmp/ft-results                      # the full default grid
    python benchmarks/finetune.py --replicates 1 --splits random --models efficientnet-lite0@64 \\
        --objectives dc-plain,dc-sharp2 --steps 20 --gallery 300 --queries 100 --out /tmp/ft-smoke
    python benchmarks/finetune.py --table-only /tmp/ft-results               # rebuild the tables only

The grid is model × split × replicate × arm. An *arm* is a name plus :class:`TrainConfig`
overrides (:data:`ARMS`); the base encoder (no training) is the reference arm ``base``.

* Replicate ``r`` (0 … R−1) uses training seed ``r``. ``random`` split: training set and gallery =
  ``terrain.build_world(G gallery tiles, seed 2r)``; queries = a separate world with seed ``2r+1``
  (other points, other noise; never seen in training). ``held-out-cells`` split: one world, seed
  ``2r``, ``split="held-out-cells"``: a random 20 % of the populated 2° cells are held out; the
  gallery/training tiles come only from the other cells and the Q queries only from the held-out
  ones (so no query lies in a cell the model trained on or the gallery covers). Both worlds must
  come from the same seed for the held-out cells to agree, which is why this split's query seed
  is ``2r`` (the points and tile noise still come from separate streams).
* Training (each arm): ``train=projection`` (or ``last-blocks --blocks N``), ``cache_trunk``, no
  flips, ``--steps`` steps, batch 64, seed r, CPU; the best validation step's weights are kept
  (``--final``: the last step's, no validation split).
* Evaluation (every arm, base included): gallery + queries embedded with ``embed.embed``;
  ``evaluate.evaluate`` at 1-NN and densest k=10 — per-query Geoscore and error km go into the
  run's JSON so arms pair with the base query by query; ``analysis.analyze_stores`` on all pairs
  of the Q query embeddings: Spearman ρ(similarity, distance), mean cosine, effective rank,
  false-friend rate (far pairs > 5000 km more similar than the 95th percentile of near pairs
  < 25 km) and the binned similarity-vs-distance curve; error-band histogram (0–25, 25–200,
  200–750, 750–2500, > 2500 km).

Each (model, split, replicate, arm) writes ``OUT/<model>/<split>/r<r>/<arm>.json`` (an arm whose
objective or field TrainConfig does not know yet writes a ``"status": "skipped"`` JSON with the
reason). The tables (``OUT/tables.md`` and stdout) are rebuilt from those JSONs alone:

* Pooled Δ vs base per (model, split, arm): the mean over replicates of each replicate's mean
  per-query Geoscore difference (every replicate weighs the same). 95 % CI: *stratified paired
  bootstrap* — in each of B resamples the queries are resampled with replacement within every
  replicate (same resample for arm and base: paired), the replicate means are averaged, and the
  2.5 / 97.5 percentiles of that average are the interval. It reflects query sampling only; the
  spread between replicates (worlds + training seed) is shown separately (min … max of the
  replicate Δs) and by the count of replicates whose own paired-bootstrap CI is clear of zero
  (``↑`` above, ``↓`` below).
* Mechanism of the winning arm (largest pooled Δ at densest k=10) per model/split: Spearman,
  effective rank, mean cosine, false-friend rate base vs arm (means over replicates), queries per
  error band (summed over replicates) and ``OUT/mechanism_<model>_<split>.png`` (similarity vs
  distance before/after; error bands).

Defaults: 5 replicates × 2 splits × 2 models × (base + 6 arms), 1500 gallery tiles, 500 queries,
300 steps, one torch thread and one BLAS thread: ≈ 45 min on the shared 2-core CPU (measured per
run: Lite2@64 base 9 s, an arm ≈ 23 s; Lite0@64 base 7 s, an arm ≈ 20 s). ``--replicates 3``
≈ 28 min. Finished runs are reused (same settings → same JSON), so an interrupted run resumes.
Scores on the terrain world are NOT comparable with street-view benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

# One BLAS thread (set before numpy loads OpenBLAS): on a small shared CPU a multi-threaded
# OpenBLAS spin-waits against the other process — eigvalsh of the 1280×1280 Gram matrix in the
# effective-rank diagnostic took 9 s instead of 0.2 s on the 2-core machine with a second job running.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

#: arm name → TrainConfig overrides (the objective names are TrainConfig's).
ARMS: dict[str, dict] = {
    "contrastive": {"objective": "geo-contrastive"},
    "dc-plain": {"objective": "distance-consistency", "sharpen": 1.0},
    "dc-sharp2": {"objective": "distance-consistency", "sharpen": 2.0},
    "dc-falling": {"objective": "distance-consistency", "sharpen": 2.0, "consistency_max_km": 2000.0},
    "rnc": {"objective": "rank-n-contrast"},
    "soft": {"objective": "soft-contrastive"},
}
BASE = "base"
SPLITS = ("random", "held-out-cells")
DEFAULT_MODELS = ("efficientnet-lite0@64", "efficientnet-lite2@64")
#: (strategy, k) pairs reported; the key in the JSONs is f"{strategy}@{k}".
SETTINGS = (("nn", 1), ("densest", 10))
KEYS = tuple(f"{s}@{k}" for s, k in SETTINGS)
LABELS = {"nn@1": "1-NN", "densest@10": "densest k=10"}
#: the metric that picks the winning arm
WIN_KEY = "densest@10"
#: error bands (km): [0, 25), [25, 200), [200, 750), [750, 2500), [2500, ∞)
BAND_EDGES_KM = (0.0, 25.0, 200.0, 750.0, 2500.0, math.inf)
BAND_LABELS = ("0–25", "25–200", "200–750", "750–2500", ">2500")


# ==================================================================================== helpers
def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def run_path(out: Path, model: str, split: str, rep: int, arm: str) -> Path:
    return out / slug(model) / split / f"r{rep}" / f"{arm}.json"


def error_bands(km) -> list[int]:
    """Queries per error band (:data:`BAND_EDGES_KM`)."""
    km = np.asarray(km, np.float64)
    return [int(((km >= lo) & (km < hi)).sum()) for lo, hi in zip(BAND_EDGES_KM[:-1], BAND_EDGES_KM[1:])]


def parse_arms(text: str) -> list[str]:
    """``--objectives``: arm names from :data:`ARMS`, or objective names (every arm with that objective)."""
    out: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        names = [item] if item in ARMS else [a for a, o in ARMS.items() if o.get("objective") == item]
        if not names:
            raise SystemExit(f"--objectives: unknown arm or objective {item!r}; arms: {', '.join(ARMS)}; "
                             f"objectives: {', '.join(sorted({o['objective'] for o in ARMS.values()}))}")
        out += [n for n in names if n not in out]
    return out


def arm_unavailable(overrides: dict) -> str | None:
    """Why TrainConfig cannot run these overrides yet (unknown field or objective), else None."""
    from geosolver.errors import GeosolverError
    from geosolver.train import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    missing = [k for k in overrides if k not in fields]
    if missing:
        return f"TrainConfig has no field {', '.join(missing)}"
    choices = fields["objective"].metadata.get("choices")
    if "objective" in overrides and choices and overrides["objective"] not in choices:
        return f"objective {overrides['objective']!r} is not one of TrainConfig's ({', '.join(choices)})"
    try:
        TrainConfig(out="/nonexistent", root="/nonexistent", **overrides).check()
    except (GeosolverError, TypeError, ValueError) as e:
        return f"TrainConfig refuses it: {e}"
    return None


# ==================================================================================== running
def build_worlds(work: Path, split: str, rep: int, n_gallery: int, n_queries: int) -> tuple[Path, Path, int, int]:
    """``(gallery world, query world, gallery seed, query seed)`` for a split and replicate (built once)."""
    from geosolver.terrain import build_world

    base = work / "worlds" / split / f"r{rep}"
    if split == "random":
        todo = [(base / "gallery", n_gallery, 0, 2 * rep), (base / "queries", 0, n_queries, 2 * rep + 1)]
        g_w, q_w, q_seed = todo[0][0], todo[1][0], 2 * rep + 1
    else:
        todo = [(base / "world", n_gallery, n_queries, 2 * rep)]
        g_w = q_w = todo[0][0]
        q_seed = 2 * rep
    for w, g, q, seed in todo:
        info = w / "world.json"
        if info.exists():
            s = json.loads(info.read_text()).get("settings", {})
            if (s.get("n_gallery"), s.get("n_queries"), s.get("seed"), s.get("split")) == (g, q, seed, split):
                continue
        t = time.time()
        build_world(w, n_gallery=g, n_queries=q, seed=seed, split=split, progress=False, overwrite=True)
        print(f"built {split} r{rep} {w.name} world ({g} gallery, {q} queries, seed {seed}) in {time.time() - t:.0f}s", flush=True)
    return g_w, q_w, 2 * rep, q_seed


def embed_pair(model, g_world: Path, q_world: Path, stores: Path) -> tuple[Path, Path, float]:
    from geosolver.data import read_dataset
    from geosolver.embed import embed
    from geosolver.encoders import load_encoder

    t = time.time()
    enc = model if not isinstance(model, (str, Path)) else load_encoder(str(model), device="cpu")
    out = {}
    for which, world, csv in (("gallery", g_world, "gallery.csv"), ("queries", q_world, "queries.csv")):
        table = read_dataset("folder", world, csv=world / csv)
        out[which] = stores / which
        embed(table, enc, out[which], batch_size=128, num_workers=0, progress=False, config={"benchmark": "finetune"})
    return out["gallery"], out["queries"], time.time() - t


def evaluate_arm(g: Path, q: Path, work: Path, n_queries: int, bootstrap: int) -> dict:
    """Per-query Geoscore/km by setting, summaries, analysis numbers of the query embeddings."""
    import pandas as pd

    from geosolver.analysis import analyze_stores
    from geosolver.evaluate import evaluate

    t = time.time()
    ev = work / "eval"
    r = evaluate(q, g, strategies=tuple(s for s, _ in SETTINGS), ks=tuple(sorted({k for _, k in SETTINGS})),
                 out=ev, plots=False, progress=False, bootstrap=bootstrap, seed=0)
    rows = {f"{x['strategy']}@{x['k']}": x for x in r["rows"]}
    p = pd.read_parquet(ev / "predictions.parquet")
    per_query, summary, bands = {}, {}, {}
    ids = None
    for s, k in SETTINGS:
        key = f"{s}@{k}"
        sel = p[(p.strategy == s) & (p.k == k)].sort_values("id")
        ids = sel["id"].astype(str).tolist() if ids is None else ids
        if sel["id"].astype(str).tolist() != ids:
            raise RuntimeError(f"{ev}: the settings' query ids differ")
        per_query[key] = {"geoscore": sel["geoscore"].to_numpy(np.float64), "km": sel["km"].to_numpy(np.float64)}
        m = rows[key]
        summary[key] = {"geoscore": m["geoscore"], "ci95": m.get("geoscore_ci95"), "median_km": m["median_km"]}
        bands[key] = error_bands(per_query[key]["km"])
    an = analyze_stores([q], work / "analysis", sample=n_queries, names=["x"], progress=False, report=False)["encoders"]["x"]
    return {
        "ids": ids,
        "per_query": per_query,
        "summary": summary,
        "error_bands": bands,
        "references": {"random": r["references"]["random"]["geoscore"], "oracle": r["references"]["oracle"]["geoscore"]},
        "spearman": an["spearman"],
        "mean_cos": an["diagnostics"]["mean_cosine"],
        "eff_rank": an["diagnostics"]["effective_rank"],
        "false_friend_rate": an["false_friend_share"],
        "n_near_pairs": an["n_near_pairs"],
        "n_far_pairs": an["n_far_pairs"],
        "curve": {"edges_km": an["binned"]["edges_km"], "mean_km": an["binned"]["mean_km"],
                  "mean_sim": an["binned"]["mean_sim"], "count": an["binned"]["count"]},
        "eval_s": time.time() - t,
    }


def kept_step(run: dict):
    """The kept step of a run for the table: ``None`` (base), the step, or ``"N†"`` when training stopped on a collapse."""
    step = run.get("best_step")
    return f"{step}†" if step is not None and run.get("collapsed") else step


def signature(args, model: str, split: str, rep: int, arm: str) -> dict:
    return {"model": model, "split": split, "replicate": rep, "arm": arm, "overrides": ARMS.get(arm, {}),
            "gallery": args.gallery, "queries": args.queries, "steps": args.steps, "train": args.train,
            "blocks": args.blocks if args.train == "last-blocks" else None, "cache_trunk": args.cache_trunk,
            "final": args.final, "bootstrap": args.bootstrap,
            **({"lr": args.lr} if args.lr is not None and arm != BASE else {})}


def run_one(args, work: Path, out: Path, model: str, split: str, rep: int, arm: str, worlds) -> None:
    from geosolver.files import jsonable

    path = run_path(out, model, split, rep, arm)
    sig = signature(args, model, split, rep, arm)
    if path.exists() and json.loads(path.read_text()).get("signature") == sig:
        print(f"[{model} {split} r{rep} {arm}] reusing {path}", flush=True)
        return
    g_w, q_w, g_seed, q_seed = worlds
    rec = {"signature": sig, "model": model, "split": split, "replicate": rep, "arm": arm,
           "overrides": ARMS.get(arm, {}), "gallery_world_seed": g_seed, "query_world_seed": q_seed, "train_seed": rep}
    tag = f"{slug(model)}/{split}/r{rep}/{arm}"
    why = None if arm == BASE else arm_unavailable(ARMS[arm])
    if why:
        rec.update(status="skipped", reason=why)
        print(f"[{tag}] skipped: {why}", flush=True)
    else:
        if arm == BASE:
            enc, info = model, {"train_s": 0.0, "best_step": None, "steps": 0}
        else:
            from geosolver.train import TrainConfig, train

            cfg = TrainConfig(
                out=str(work / "runs" / tag), root=str(g_w), dataset="folder", csv=str(g_w / "gallery.csv"), model=model,
                train=args.train, blocks=args.blocks, cache_trunk=args.cache_trunk, flip=False, steps=args.steps,
                batch_size=64, seed=rep, device="cpu", progress=False, overwrite=True, save_every=0, **({"val_fraction": 0.0} if args.final else {}),
                **({"lr": args.lr} if args.lr is not None else {}),
                **ARMS[arm],
            )
            from geosolver.errors import CollapseError

            t = time.time()
            collapsed = None
            try:
                res = train(cfg)
            except CollapseError as e:  # an outcome, not a failure: the best weights before the collapse are kept
                res, collapsed = e.result, str(e).split(";")[0]
                print(f"[{tag}] {collapsed}; evaluating the kept step {res.best_step}", flush=True)
            enc = res.model_dir
            info = {"train_s": time.time() - t, "best_step": res.best_step, "steps": res.steps, "collapsed": collapsed,
                    "val_initial": res.initial_metrics, "val_best": res.best_metrics, "val_final": res.final_metrics}
        # fresh stores and eval dirs: a finished store at the same path would be reused by embed()
        # even though the run's weights changed (e.g. after --final or another --steps)
        for d in (work / "stores" / tag, work / "eval" / tag):
            shutil.rmtree(d, ignore_errors=True)
        g, q, embed_s = embed_pair(enc, g_w, q_w, work / "stores" / tag)
        ev = evaluate_arm(g, q, work / "eval" / tag, args.queries, args.bootstrap)
        rec.update(status="ok", **info, embed_s=embed_s, **ev)
        print(f"[{tag}] train {info['train_s']:.0f}s embed {embed_s:.0f}s eval {ev['eval_s']:.0f}s: "
              + ", ".join(f"{LABELS[k]} {ev['summary'][k]['geoscore']:.0f}" for k in KEYS), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jsonable(rec)) + "\n")
    tmp.replace(path)


# ==================================================================================== tables
def load_runs(out: Path) -> list[dict]:
    runs = []
    for p in sorted(Path(out).rglob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(rec, dict) and {"model", "split", "replicate", "arm", "status"} <= rec.keys():
            runs.append(rec)
    return runs


def paired_diffs(arm: dict, base: dict, key: str) -> np.ndarray:
    """Per-query Geoscore difference arm − base, paired by query id."""
    if list(arm["ids"]) != list(base["ids"]):
        raise ValueError(f"{arm['model']} {arm['split']} r{arm['replicate']}: arm {arm['arm']!r} and base were "
                         "evaluated on different queries; cannot pair them")
    return np.asarray(arm["per_query"][key]["geoscore"], np.float64) - np.asarray(base["per_query"][key]["geoscore"], np.float64)


def pooled_bootstrap(diffs: list[np.ndarray], n_boot: int = 2000, seed: int = 0) -> dict:
    """Stratified paired bootstrap of per-query differences, one array per replicate.

    Returns ``{"mean", "lo", "hi"}`` (pooled: mean of the replicate means and its 95 % percentile
    interval, queries resampled within each replicate), ``"per_rep"``: ``[(mean, lo, hi)]`` per
    replicate from the same resamples, and ``"above"`` / ``"below"``: replicates whose interval
    lies entirely above / below zero.
    """
    if not diffs:
        raise ValueError("no replicates")
    boots, per_rep = [], []
    for r, d in enumerate(diffs):
        d = np.asarray(d, np.float64)
        rng = np.random.default_rng([seed, r])
        b = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
        lo, hi = np.percentile(b, [2.5, 97.5])
        boots.append(b)
        per_rep.append((float(d.mean()), float(lo), float(hi)))
    pooled = np.mean(boots, axis=0)
    lo, hi = np.percentile(pooled, [2.5, 97.5])
    return {"mean": float(np.mean([m for m, _, _ in per_rep])), "lo": float(lo), "hi": float(hi), "per_rep": per_rep,
            "above": sum(1 for _, a, _ in per_rep if a > 0), "below": sum(1 for _, _, b in per_rep if b < 0), "n": len(diffs)}


def _nanmean(xs) -> float:
    v = np.array([np.nan if x is None else x for x in xs], np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def summarise(runs: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Everything the tables show, keyed by (model, split): arms with their pooled Δs, skips, winner."""
    groups: dict[tuple[str, str], dict] = {}
    for r in runs:
        g = groups.setdefault((r["model"], r["split"]), {"ok": {}, "skipped": {}})
        if r["status"] == "ok":
            g["ok"].setdefault(r["arm"], {})[int(r["replicate"])] = r
        else:
            g["skipped"].setdefault(r["arm"], r.get("reason", ""))
    out = {}
    for (model, split), g in sorted(groups.items()):
        base = g["ok"].get(BASE, {})
        arms = {}
        for arm, reps in g["ok"].items():
            if arm == BASE:
                continue
            shared = sorted(set(reps) & set(base))
            if not shared:
                continue
            row = {"replicates": shared, "delta": {}, "spread": {}, "kept_steps": [kept_step(reps[r]) for r in shared]}
            for key in KEYS:
                ds = [paired_diffs(reps[r], base[r], key) for r in shared]
                row["delta"][key] = pooled_bootstrap(ds, n_boot, seed)
                means = [m for m, _, _ in row["delta"][key]["per_rep"]]
                row["spread"][key] = (min(means), max(means))
            for name, src in (("arm", reps), ("base", base)):
                row[name] = {
                    "geoscore": {k: _nanmean([src[r]["summary"][k]["geoscore"] for r in shared]) for k in KEYS},
                    **{m: _nanmean([src[r][m] for r in shared]) for m in ("spearman", "mean_cos", "eff_rank", "false_friend_rate")},
                    "bands": {k: np.sum([src[r]["error_bands"][k] for r in shared], axis=0).astype(int).tolist() for k in KEYS},
                    "curves": [src[r]["curve"] for r in shared],
                }
            arms[arm] = row
        winner = max(arms, key=lambda a: arms[a]["delta"][WIN_KEY]["mean"]) if arms else None
        skipped = {a: why for a, why in g["skipped"].items() if a not in arms}
        out[(model, split)] = {"arms": arms, "skipped": skipped, "winner": winner, "base_reps": sorted(base)}
    return out


def _d(x: dict) -> str:
    return f"{x['mean']:+.0f} [{x['lo']:+.0f}, {x['hi']:+.0f}]"


def _bold_if_clear(x: dict) -> str:
    s = _d(x)
    return f"**{s}**" if x["lo"] > 0 or x["hi"] < 0 else s


def _clear(x: dict) -> str:
    return f"{x['above']}↑ {x['below']}↓ /{x['n']}"


def tables_markdown(summary: dict) -> str:
    """The pooled table and the mechanism blocks, as markdown."""
    lines = [
        "| model | split | arm | R | Δ Geoscore 1-NN [95% CI] | reps CI ≠ 0 | replicate Δ range | Δ Geoscore densest k=10 [95% CI] "
        "| reps CI ≠ 0 | replicate Δ range | Geoscore 1-NN / densest (arm; base) | Spearman ρ (arm; base) | eff. rank (arm; base) "
        "| kept step per rep |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for (model, split), s in summary.items():
        for arm, row in s["arms"].items():
            a, b, dl, sp = row["arm"], row["base"], row["delta"], row["spread"]
            lines.append(
                f"| {model} | {split} | {arm}{' (winner)' if arm == s['winner'] else ''} | {len(row['replicates'])} "
                + "".join(f"| {_bold_if_clear(dl[k])} | {_clear(dl[k])} | {sp[k][0]:+.0f} … {sp[k][1]:+.0f} " for k in KEYS)
                + f"| {a['geoscore']['nn@1']:.0f} / {a['geoscore']['densest@10']:.0f}; {b['geoscore']['nn@1']:.0f} / {b['geoscore']['densest@10']:.0f} "
                f"| {a['spearman']:+.3f}; {b['spearman']:+.3f} | {a['eff_rank']:.1f}; {b['eff_rank']:.1f} "
                f"| {', '.join('—' if x is None else str(x) for x in row['kept_steps'])} |"
            )
        for arm, why in s["skipped"].items():
            notes.append(f"- {model} / {split} / **{arm}** skipped: {why}")
    text = "\n".join(lines) + "\n"
    text += (
        "\nΔ = arm − base, per-query Geoscore, mean over replicates (each replicate weighs the same). 95% CI: stratified paired "
        "bootstrap — queries resampled within each replicate (same resample for arm and base), replicate means averaged; it "
        "covers query sampling, not the spread between replicates, which the 'replicate Δ range' column shows. 'reps CI ≠ 0': "
        "replicates whose own paired-bootstrap CI lies above (↑) / below (↓) zero. Bold: pooled CI clear of zero. "
        "Kept step: the training step whose weights were evaluated (the best validation step, or the last with --final; 0 = the base weights were kept, "
        "so Δ is exactly 0; '0†' = training stopped when the embedding space collapsed and the best weights before it were kept).\n"
    )
    if notes:
        text += "\nSkipped arms:\n" + "\n".join(notes) + "\n"
    for (model, split), s in summary.items():
        text += mechanism_markdown(model, split, s)
    return text


def mechanism_markdown(model: str, split: str, s: dict) -> str:
    w = s["winner"]
    if w is None:
        return ""
    row = s["arms"][w]
    a, b, dl = row["arm"], row["base"], row["delta"][WIN_KEY]
    t = (f"\n#### {model} · {split}: winning arm **{w}** (pooled Δ {LABELS[WIN_KEY]} {_d(dl)}, "
         f"{len(row['replicates'])} replicate(s))\n\n"
         f"![mechanism](mechanism_{slug(model)}_{split}.png)\n\n"
         f"| | base | {w} |\n|---|---|---|\n")
    for name, key, fmt in (("Spearman ρ (similarity vs distance; < 0 = geographic)", "spearman", "{:+.3f}"),
                           ("effective rank", "eff_rank", "{:.1f}"), ("mean cosine", "mean_cos", "{:.3f}"),
                           ("false-friend rate (far pairs above near p95)", "false_friend_rate", "{:.4f}")):
        t += f"| {name} | {fmt.format(b[key])} | {fmt.format(a[key])} |\n"
    t += (f"\nQueries per error band, summed over replicates (a band that loses queries at the far end and gains them "
          f"near 0 = errors shrink):\n\n| error band (km) | base 1-NN | {w} 1-NN | change | base densest k=10 | {w} densest k=10 | change |\n"
          "|---|---|---|---|---|---|---|\n")
    for i, lab in enumerate(BAND_LABELS):
        t += f"| {lab} " + "".join(f"| {b['bands'][k][i]} | {a['bands'][k][i]} | {a['bands'][k][i] - b['bands'][k][i]:+d} " for k in KEYS) + "|\n"
    return t


def plot_mechanism(out: Path, model: str, split: str, s: dict) -> Path | None:
    w = s["winner"]
    if w is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = s["arms"][w]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, src, colour in (("base", row["base"], "tab:grey"), (w, row["arm"], "tab:red")):
        for i, c in enumerate(src["curves"]):
            km = np.array([np.nan if v is None else v for v in c["mean_km"]], float)
            sim = np.array([np.nan if v is None else v for v in c["mean_sim"]], float)
            ax1.plot(km, sim, color=colour, alpha=0.8, lw=1.2, label=name if i == 0 else None)
    ax1.set_xscale("symlog", linthresh=25)
    ax1.set_xlabel("great-circle distance between two queries (km)")
    ax1.set_ylabel("mean cosine similarity")
    ax1.set_title("similarity vs distance (one line per replicate)")
    ax1.legend()
    x = np.arange(len(BAND_LABELS))
    ax2.bar(x - 0.2, row["base"]["bands"][WIN_KEY], 0.4, color="tab:grey", label="base")
    ax2.bar(x + 0.2, row["arm"]["bands"][WIN_KEY], 0.4, color="tab:red", label=w)
    ax2.set_xticks(x, BAND_LABELS)
    ax2.set_xlabel(f"{LABELS[WIN_KEY]} error (km)")
    ax2.set_ylabel("queries (all replicates)")
    ax2.set_title("error bands")
    ax2.legend()
    fig.suptitle(f"{model} · {split}: base vs {w}")
    fig.tight_layout()
    p = out / f"mechanism_{slug(model)}_{split}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def write_tables(out: Path, n_boot: int = 2000, plots: bool = True) -> str:
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"{out}: no run JSONs found")
    summary = summarise(runs, n_boot)
    text = tables_markdown(summary)
    if plots:
        for (model, split), s in summary.items():
            plot_mechanism(out, model, split, s)
    (out / "tables.md").write_text(text)
    return text


# ==================================================================================== main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicates", type=int, default=5, help="replicates r = 0..N-1 (default 5)")
    p.add_argument("--splits", default=",".join(SPLITS), help=f"comma list of {', '.join(SPLITS)} (default both)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma list of encoders (default %(default)s)")
    p.add_argument("--objectives", default=",".join(ARMS),
                   help="comma list of arms (" + ", ".join(f"{a}: {' '.join(f'{k}={v}' for k, v in o.items())}" for a, o in ARMS.items())
                   + ") or objective names (every arm with that objective); default all")
    p.add_argument("--train", choices=("projection", "last-blocks"), default="projection")
    p.add_argument("--blocks", type=int, default=2, help="N of --train last-blocks")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of every arm (default: TrainConfig's for the --train mode: projection 1e-3, last-blocks 2e-5)")
    p.add_argument("--cache-trunk", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default 300)")
    p.add_argument("--gallery", type=int, default=1500, help="training / gallery tiles (default 1500)")
    p.add_argument("--queries", type=int, default=500, help="query tiles (default 500)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (evaluate's CIs and the tables')")
    p.add_argument("--final", action="store_true", help="val_fraction=0: keep the last step's weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: with 2 threads on a shared 2-core CPU a training step took 13x longer)")
    p.add_argument("--work", default="/tmp/geosolver-finetune-bench", help="worlds, stores, runs (reused)")
    p.add_argument("--out", default=None, help="result JSONs + tables (default WORK/results)")
    p.add_argument("--table-only", metavar="DIR", default=None, help="rebuild the tables from DIR's JSONs; run nothing")
    args = p.parse_args(argv)
    if args.table_only:
        print(write_tables(Path(args.table_only), args.bootstrap))
        return
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise SystemExit(f"--splits: unknown {bad}; choose from {', '.join(SPLITS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    arms = parse_arms(args.objectives)
    if args.replicates < 1:
        raise SystemExit("--replicates must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = Path(args.out) if args.out else work / "results"
    t0 = time.time()
    for rep in range(args.replicates):
        for split in splits:
            worlds = build_worlds(work, split, rep, args.gallery, args.queries)
            for model in models:
                for arm in [BASE, *arms]:
                    run_one(args, work, out, model, split, rep, arm, worlds)
    total = time.time() - t0
    print(f"\nTerrain world: {args.gallery} gallery/training tiles, {args.queries} queries; models {', '.join(models)}; "
          f"train={args.train}{f' {args.blocks}' if args.train == 'last-blocks' else ''}, cached trunk {args.cache_trunk}, no flips, "
          f"{args.steps} steps, batch 64, lr {args.lr if args.lr is not None else 'default'}, seed r; kept weights: {'last step' if args.final else 'best validation step'}; "
          f"{args.replicates} replicate(s); total {total:.0f}s. Not comparable with street-view benchmarks.\n", flush=True)
    print(write_tables(out, args.bootstrap))


if __name__ == "__main__":
    sys.exit(main())
