"""Terrain-world benchmark: random / oracle references, colour histogram, EfficientNet-Lite0
(1-NN, best top-k strategy, 8-orientation test-time augmentation), on both splits.

    python benchmarks/terrain.py                       # gallery 20 000 / queries 1 000, both splits
    python benchmarks/terrain.py --gallery 4000 --queries 400 --work /tmp/tb

Everything goes through the public API (terrain.build_world → data.read_dataset →
embed.embed → evaluate.evaluate), so the numbers are what the CLI gives. Scores on the
terrain world are NOT comparable with street-view benchmarks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from geosolver.data import read_dataset
from geosolver.embed import embed
from geosolver.encoders import load_encoder
from geosolver.evaluate import evaluate
from geosolver.terrain import build_world

TOPK_STRATEGIES = ("weighted-mean", "densest")
KS = (5, 10, 20, 50)


def _embed(world: Path, which: str, model: str, work: Path, tta: str | None) -> Path:
    out = work / "stores" / f"{model.replace('/', '_')}{'-tta-' + tta if tta else ''}" / which
    table = read_dataset("folder", world, csv=world / f"{which}.csv")
    enc = load_encoder(model, device="cpu")
    res = embed(table, enc, out, batch_size=128, num_workers=1, tta=tta, progress=False, config={"benchmark": "terrain"})
    if res.rows_embedded:
        print(f"  embedded {model}{' tta=' + tta if tta else ''} {which}: {res.rows_embedded} at {res.images_per_s:.0f} img/s", flush=True)
    return out


def _row(split: str, method: str, m: dict, secs: float | None = None) -> dict:
    return {
        "split": split, "method": method, "geoscore": m["geoscore"], "ci": m.get("geoscore_ci95"),
        "median_km": m["median_km"], **{k: m[k] for k in m if k.startswith("acc@")},
    }


def run_split(split: str, args) -> list[dict]:
    work = Path(args.work) / split
    world = work / "world"
    if not (world / "world.json").exists():
        t = time.time()
        build_world(world, args.gallery, args.queries, split=split, seed=args.seed, progress=False, overwrite=True)
        print(f"[{split}] world built in {time.time() - t:.0f}s", flush=True)
    rows: list[dict] = []
    hist_g, hist_q = (_embed(world, w, "histogram", work, None) for w in ("gallery", "queries"))
    r = evaluate(hist_q, hist_g, strategies=("nn", *TOPK_STRATEGIES), ks=KS, progress=False, plots=False, seed=args.seed)
    rows.append(_row(split, "random gallery location", r["references"]["random"]))
    rows.append(_row(split, "oracle (nearest gallery coordinate)", r["references"]["oracle"]))
    nn = next(x for x in r["rows"] if x["strategy"] == "nn")
    rows.append(_row(split, "histogram 1-NN", nn))
    rows.append(_row(split, f"histogram {r['best']['strategy']} k={r['best']['k']}", r["best"]))

    model = args.model
    g = _embed(world, "gallery", model, work, None)
    q = _embed(world, "queries", model, work, None)
    q8 = _embed(world, "queries", model, work, "d4")
    for label, qs in ((model, q), (f"{model} + TTA d4", q8)):
        # the TTA query store has another identity only through its config; the encoder is the same
        r = evaluate(qs, g, strategies=("nn", *TOPK_STRATEGIES), ks=KS, progress=False, plots=False, seed=args.seed)
        nn = next(x for x in r["rows"] if x["strategy"] == "nn")
        rows.append(_row(split, f"{label} 1-NN", nn))
        rows.append(_row(split, f"{label} {r['best']['strategy']} k={r['best']['k']}", r["best"]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gallery", type=int, default=20000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--splits", default="random,held-out-cells")
    p.add_argument("--model", default="efficientnet-lite0@64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/geosolver-terrain-bench")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    t0 = time.time()
    rows = [r for s in args.splits.split(",") for r in run_split(s, args)]
    print(f"\nTerrain world, gallery {args.gallery} / queries {args.queries}, seed {args.seed} "
          f"({time.time() - t0:.0f}s). Not comparable with street-view benchmarks.\n")
    accs = [k for k in rows[0] if k.startswith("acc@")]
    print("| split | method | Geoscore [95% CI] | median km | " + " | ".join(accs) + " |")
    print("|---|---|---|---|" + "---|" * len(accs))
    for r in rows:
        ci = f" [{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]" if r.get("ci") else ""
        print(f"| {r['split']} | {r['method']} | {r['geoscore']:.0f}{ci} | {r['median_km']:.0f} | "
              + " | ".join(f"{100 * r[a]:.1f}" for a in accs) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
