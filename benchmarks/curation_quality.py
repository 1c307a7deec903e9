"""Which curation strategy makes the best small gallery? Equal gallery sizes, same queries.

For each split of the terrain world (built and embedded by ``benchmarks/terrain.py``, which this
script reuses from ``--work``; run that first), curate the 20 000-tile gallery down to each
``--sizes`` with every strategy and evaluate the same queries against it:

    python benchmarks/terrain.py            # builds /tmp/geosolver-terrain-bench
    python benchmarks/curation_quality.py --sizes 1000,5000

Prints mean Geoscore [95 % CI], median km and coverage (2° cells, median km from a random land
point to the nearest gallery image) per (split, encoder, size, strategy). Terrain-world scores
are not comparable with street-view benchmarks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geosolver.curate import curate_store
from geosolver.evaluate import evaluate

STRATEGIES = ("random", "cell", "grouped", "grouped-clustered")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/geosolver-terrain-bench")
    p.add_argument("--splits", default="random,held-out-cells")
    p.add_argument("--models", default="efficientnet-lite0@64,histogram")
    p.add_argument("--sizes", default="1000,5000")
    p.add_argument("--by", default="cell,land_cover,climate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for split in args.splits.split(","):
        for model in args.models.split(","):
            base = Path(args.work) / split / "stores" / model.replace("/", "_")
            gallery, queries = base / "gallery", base / "queries"
            if not (gallery / "manifest.json").exists():
                raise SystemExit(f"{gallery} missing: run benchmarks/terrain.py --work {args.work} first")
            full = evaluate(queries, gallery, strategies=("nn", "densest"), ks=(1, 10), progress=False, plots=False, seed=args.seed)
            rows.append({"split": split, "encoder": model, "size": "all", "strategy": "(full gallery)", **_pick(full)})
            for size in (int(s) for s in args.sizes.split(",")):
                for strategy in STRATEGIES:
                    out = base / f"curated-{strategy}-{size}-s{args.seed}"
                    if not (out / "manifest.json").exists():
                        curate_store(gallery, out, size, by=args.by.split(","), strategy=strategy, seed=args.seed, make_map=False)
                    cov = json.loads((out / "coverage.json").read_text())["after"]
                    r = evaluate(queries, out, strategies=("nn", "densest"), ks=(1, 10), progress=False, plots=False, seed=args.seed)
                    rows.append({"split": split, "encoder": model, "size": size, "strategy": strategy, **_pick(r),
                                 "cells": cov.get("cells_covered"), "land_km": cov.get("land_median_km")})
                    print(f"{split} {model} {size} {strategy}: {rows[-1]['geoscore']:.0f}", flush=True)
    print("\n| split | encoder | gallery | strategy | best | Geoscore [95% CI] | median km | oracle | 2° cells | median km land→gallery |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['encoder']} | {r['size']} | {r['strategy']} | {r['best']} | {r['geoscore']:.0f} "
              f"[{r['ci'][0]:.0f}, {r['ci'][1]:.0f}] | {r['median_km']:.0f} | {r['oracle']:.0f} | {r.get('cells') or ''} | "
              f"{'' if r.get('land_km') is None else round(r['land_km'])} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))


def _pick(res: dict) -> dict:
    b = res["best"]
    return {"best": f"{b['strategy']} k={b['k']}", "geoscore": b["geoscore"], "ci": b["geoscore_ci95"],
            "median_km": b["median_km"], "oracle": res["references"]["oracle"]["geoscore"]}


if __name__ == "__main__":
    main()
