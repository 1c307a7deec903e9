"""Which curation strategy makes the best small gallery, for queries spread by people or by area?

For each replicate (an independent world seed) this builds one terrain gallery *pool*
(``--pool`` tiles, drawn ``--gallery-from`` GeoNames places or MP-16 photo locations) and one
query set per ``--query-dists`` (``population``: near GeoNames places like the gallery;
``land``: uniform over land area; ``settlements``: uniform over land within 25 km of a GeoNames
place), embeds them, curates the pool down to every ``--sizes`` with every strategy
(random / cell / grouped / grouped-clustered) and evaluates every query set against every
curated gallery with one fixed vote (``densest`` k=10: fixed, so no setting is picked on the
test queries). Each (replicate, query set, encoder, size, strategy) run writes one JSON into
``--out`` holding its per-query Geoscores; the table is rebuilt from those JSONs:

    python benchmarks/curation_quality.py --replicates 3          # full run (see README for time)
    python benchmarks/curation_quality.py --sizes 1000 --pool 2000 --queries 100 \\
        --replicates 1 --work /tmp/cq-smoke                         # smoke
    python benchmarks/curation_quality.py --table-only /tmp/geosolver-curation-bench/results

Table cells: mean Geoscore [95 % CI] over the queries of all replicates (hierarchical bootstrap:
replicates, then queries within each), and for the curated strategies the paired difference
to ``random`` on the same queries and replicate, Δ [95 % CI]. "land→gallery km": median
distance from 2000 random land points to the nearest gallery image (coverage.json), mean over
replicates. Query worlds use seed ``1_000_000 + replicate`` so they never share a draw with the
gallery pool. Terrain-world scores are not comparable with street-view benchmarks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from geosolver.curate import curate_store
from geosolver.data import read_dataset
from geosolver.embed import embed
from geosolver.encoders import load_encoder
from geosolver.evaluate import evaluate
from geosolver.terrain import GALLERY_SOURCES, QUERY_DISTRIBUTIONS, build_world

STRATEGIES = ("random", "cell", "grouped", "grouped-clustered")
VOTE = ("densest", 10)
QUERY_SEED_OFFSET = 1_000_000


def _csv(kind):
    def parse(s: str):
        return [kind(x) for x in s.split(",") if x]
    return parse


def _embed(world: Path, which: str, model: str, out: Path) -> Path:
    table = read_dataset("folder", world, csv=world / f"{which}.csv")
    res = embed(table, load_encoder(model, device="cpu"), out, batch_size=128, num_workers=1, progress=False,
                config={"benchmark": "curation_quality"})
    if res.rows_embedded:
        print(f"  embedded {model} {world.name}/{which}: {res.rows_embedded} at {res.images_per_s:.0f} img/s", flush=True)
    return out


def _scores(queries: Path, gallery: Path, out: Path, seed: int) -> tuple[np.ndarray, dict]:
    r = evaluate(queries, gallery, strategies=(VOTE[0],), ks=(VOTE[1],), out=out, progress=False, plots=False, seed=seed)
    p = pd.read_parquet(out / "predictions.parquet")
    p = p[(p["strategy"] == VOTE[0]) & (p["k"] == VOTE[1])]
    row = next(x for x in r["rows"] if x["strategy"] == VOTE[0] and x["k"] == VOTE[1])
    return p["geoscore"].to_numpy(np.float64), {
        "geoscore": row["geoscore"], "ci": row["geoscore_ci95"], "median_km": row["median_km"],
        "random_ref": r["references"]["random"]["geoscore"], "oracle": r["references"]["oracle"]["geoscore"]}


def run(args) -> None:
    work, res_dir = Path(args.work), Path(args.out or Path(args.work) / "results")
    res_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    for rep in range(args.replicates):
        seed = args.seed + rep
        rdir = work / f"rep{seed}"
        gw = rdir / "gallery-world"
        t = time.time()
        if not (gw / "world.json").exists():
            build_world(gw, args.pool, 0, seed=seed, gallery_from=args.gallery_from, progress=False, overwrite=True)
        qws = {}
        for d in args.query_dists:
            qw = rdir / f"queries-{d}"
            if not (qw / "world.json").exists():
                build_world(qw, 0, args.queries, seed=QUERY_SEED_OFFSET + seed, queries_from=d, progress=False, overwrite=True)
            qws[d] = qw
        print(f"[rep {seed}] worlds ready in {time.time() - t:.0f}s", flush=True)
        for model in args.models:
            mdir = rdir / "stores" / model.replace("/", "_")
            pool = _embed(gw, "gallery", model, mdir / "pool")
            qstores = {d: _embed(qw, "queries", model, mdir / f"queries-{d}") for d, qw in qws.items()}
            galleries = [("all", "(full pool)", pool, None)]
            for size in args.sizes:
                for strategy in STRATEGIES:
                    cur = mdir / f"curated-{strategy}-{size}"
                    if not (cur / "manifest.json").exists():
                        t = time.time()
                        curate_store(pool, cur, size, by=args.by, strategy=strategy, seed=seed, make_map=False)
                        print(f"  curated {strategy} {size} in {time.time() - t:.0f}s", flush=True)
                    cov = json.loads((cur / "coverage.json").read_text())["after"]
                    galleries.append((size, strategy, cur, cov))
            for d, qs in qstores.items():
                for size, strategy, gal, cov in galleries:
                    name = f"{d}__{model.replace('/', '_')}__{size}__{strategy.strip('()').replace(' ', '-')}__s{seed}"
                    per_q, summ = _scores(qs, gal, mdir / "eval" / name, seed)
                    rec = {"replicate_seed": seed, "query_dist": d, "gallery_from": args.gallery_from, "encoder": model,
                           "pool": args.pool, "n_queries": int(per_q.size), "size": size, "strategy": strategy,
                           "vote": f"{VOTE[0]} k={VOTE[1]}", "by": args.by, **summ,
                           "land_km": None if cov is None else cov.get("land_median_km"),
                           "cells": None if cov is None else cov.get("cells_covered"),
                           "per_query_geoscore": [round(float(x), 3) for x in per_q]}
                    (res_dir / f"{name}.json").write_text(json.dumps(rec, default=float))
                    print(f"  {d} {model} {size} {strategy}: {summ['geoscore']:.0f}", flush=True)
    print(f"\nall runs in {time.time() - t_all:.0f}s; JSONs in {res_dir}\n")
    print(table(res_dir, args.bootstrap))


def _hier_boot(per_rep: list[np.ndarray], reps: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % interval of the pooled mean: resample replicates, then queries within each."""
    if not per_rep or sum(len(a) for a in per_rep) == 0:
        return float("nan"), float("nan")
    means = np.empty(reps)
    for b in range(reps):
        picks = rng.integers(0, len(per_rep), len(per_rep))
        parts = [per_rep[i][rng.integers(0, len(per_rep[i]), len(per_rep[i]))] for i in picks]
        means[b] = np.concatenate(parts).mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def table(res_dir: str | Path, bootstrap: int = 1000) -> str:
    recs = [json.loads(p.read_text()) for p in sorted(Path(res_dir).glob("*.json"))]
    if not recs:
        raise SystemExit(f"no result JSONs in {res_dir}")
    rng = np.random.default_rng(0)
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["query_dist"], r["gallery_from"], r["encoder"], str(r["size"])), {}).setdefault(
            r["strategy"], {})[r["replicate_seed"]] = r
    order_d = {d: i for i, d in enumerate(QUERY_DISTRIBUTIONS)}
    keys = sorted(groups, key=lambda k: (order_d.get(k[0], 9), k[1], k[2], k[3] == "all", int(k[3]) if k[3] != "all" else 0))
    head = "| queries | gallery from | encoder | gallery | replicates × queries | " + " | ".join(STRATEGIES) + \
        " | land→gallery km (" + " / ".join(STRATEGIES) + ") |"
    lines = [head, "|" + "---|" * (5 + len(STRATEGIES) + 1)]
    for k in keys:
        g = groups[k]
        if k[3] == "all":
            full = g["(full pool)"]
            arrs = [np.asarray(x["per_query_geoscore"]) for x in full.values()]
            lo, hi = _hier_boot(arrs, bootstrap, rng)
            m = float(np.concatenate(arrs).mean())
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | full pool {next(iter(full.values()))['pool']} | "
                         f"{len(arrs)} × {len(arrs[0])} | {m:.0f} [{lo:.0f}, {hi:.0f}] (full pool) |" + " |" * len(STRATEGIES))
            continue
        seeds = sorted(set.intersection(*(set(v) for v in g.values())))
        means, cells = {}, {}
        for s in STRATEGIES:
            if s not in g:
                cells[s] = "–"
                continue
            arrs = [np.asarray(g[s][x]["per_query_geoscore"]) for x in seeds]
            means[s] = float(np.concatenate(arrs).mean())
            lo, hi = _hier_boot(arrs, bootstrap, rng)
            txt = f"{means[s]:.0f} [{lo:.0f}, {hi:.0f}]"
            if s != "random" and "random" in g:
                diffs = [np.asarray(g[s][x]["per_query_geoscore"]) - np.asarray(g["random"][x]["per_query_geoscore"]) for x in seeds]
                dlo, dhi = _hier_boot(diffs, bootstrap, rng)
                txt += f" Δ {np.concatenate(diffs).mean():+.0f} [{dlo:+.0f}, {dhi:+.0f}]"
            cells[s] = txt
        if means:
            best = max(means, key=means.get)
            cells[best] = "**" + cells[best].replace(" Δ", "** Δ", 1) if " Δ" in cells[best] else f"**{cells[best]}**"
        land = " / ".join(
            "–" if s not in g else f"{np.mean([g[s][x]['land_km'] for x in seeds if g[s][x]['land_km'] is not None] or [np.nan]):.0f}"
            for s in STRATEGIES)
        nq = len(g[next(iter(g))][seeds[0]]["per_query_geoscore"]) if seeds else 0
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {len(seeds)} × {nq} | " + " | ".join(cells[s] for s in STRATEGIES)
                     + f" | {land} |")
    v = recs[0]
    return (f"Vote {v['vote']}; grouping by {','.join(v['by'])}; mean Geoscore [95 % CI]; Δ = paired difference to random "
            f"on the same queries [95 % CI]; best per row in bold.\n\n" + "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/geosolver-curation-bench", help="worlds, stores, curated galleries")
    p.add_argument("--out", default=None, help="result JSON folder (default WORK/results)")
    p.add_argument("--table-only", metavar="DIR", default=None, help="only rebuild the table from the JSONs in DIR")
    p.add_argument("--sizes", type=_csv(int), default=[1000, 5000, 20000])
    p.add_argument("--pool", type=int, default=40000, help="gallery pool curated from (must exceed every size)")
    p.add_argument("--queries", type=int, default=1000, help="queries per query distribution and replicate")
    p.add_argument("--query-dists", type=_csv(str), default=["population", "land"])
    p.add_argument("--gallery-from", choices=GALLERY_SOURCES, default="geonames")
    p.add_argument("--models", type=_csv(str), default=["efficientnet-lite0@64"])
    p.add_argument("--by", type=_csv(str), default=["cell", "land_cover", "climate"])
    p.add_argument("--replicates", type=int, default=1, help="independent world seeds: seed, seed+1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args()
    if args.table_only:
        print(table(args.table_only, args.bootstrap))
        return
    bad = [d for d in args.query_dists if d not in QUERY_DISTRIBUTIONS]
    if bad:
        p.error(f"--query-dists: unknown {bad}; choose from {list(QUERY_DISTRIBUTIONS)}")
    if max(args.sizes) >= args.pool:
        p.error(f"--pool {args.pool} must exceed every size (largest {max(args.sizes)})")
    if args.replicates < 1:
        p.error("--replicates must be >= 1")
    run(args)


if __name__ == "__main__":
    main()
