"""Benchmark ``geosolver curate`` (stats and select) on synthetic OSV5M-like stores.

Generates a store with OSV5M-like skew -- images clustered around Zipf-weighted centres on
land, so a few regions hold most images -- with per-row ``cell`` (2-degree grid id),
``land_cover`` (17 classes), ``climate`` (30) and ``soil`` (10) that depend on the location
(a class per 2-degree cell, 85 % of the time, otherwise a skewed random class), and random
embeddings with a per-centre component. Then times, each in a fresh process so peak RSS
(``VmHWM``) belongs to that step alone:

* ``stats``: open the store, load metadata, ``group_table`` + ``group_size_histogram``;
* ``select``: ``curate_store`` end to end (grouping, clustering, round robin, writing the
  gallery store, coverage with 2000 land points, map.png) for every strategy asked.

Usage::

    python benchmarks/curate.py --rows 1000000 --dim 768 --size 100000 --work /tmp/curate-bench
    python benchmarks/curate.py --rows 5000000 --dim 128 --size 100000 --work /tmp/curate-bench5m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from _common import hwm_mb
import pandas as pd


def _skewed_class(rng, base: np.ndarray, n_classes: int, p_base: float = 0.85) -> np.ndarray:
    """``base`` with probability ``p_base``, else a Zipf-weighted random class."""
    w = 1.0 / np.arange(1, n_classes + 1)
    other = rng.choice(n_classes, size=base.size, p=w / w.sum())
    return np.where(rng.random(base.size) < p_base, base, other).astype(np.int16)


def generate(path: Path, rows: int, dim: int, seed: int = 0, n_centres: int = 300, chunk: int = 100_000) -> None:
    """Write a synthetic OSV5M-like store of ``rows`` rows and ``dim``-d embeddings to ``path``."""
    from tqdm import tqdm

    from geosolver.curate import random_land_points
    from geosolver.geo import grid_cell, wrap_lon
    from geosolver.store import StoreWriter

    rng = np.random.default_rng(seed)
    c_lat, c_lon = random_land_points(n_centres, seed=seed)
    w = 1.0 / np.arange(1, n_centres + 1) ** 1.1  # Zipf: a few centres (countries) hold most images
    w /= w.sum()
    spread = rng.uniform(0.5, 6.0, n_centres)  # degrees
    c_vec = rng.standard_normal((n_centres, dim)).astype(np.float32)
    writer = StoreWriter(path, {"name": "synthetic-osv5m", "dim": dim}, config={"benchmark": "curate", "rows": rows, "seed": seed},
                         resume=False)
    for start in tqdm(range(0, rows, chunk), desc=f"generate {rows:,}x{dim}", unit="shard"):
        m = min(chunk, rows - start)
        which = rng.choice(n_centres, size=m, p=w)
        lat = np.clip(c_lat[which] + rng.normal(0, 1, m) * spread[which], -89.9, 89.9)
        lon = wrap_lon(c_lon[which] + rng.normal(0, 1, m) * spread[which] / np.maximum(np.cos(np.radians(lat)), 0.2))
        cell = grid_cell(lat, lon, 2.0)
        meta = pd.DataFrame({
            "id": np.char.add("s", np.arange(start, start + m).astype(str)),
            "lat": lat, "lon": lon, "cell": cell,
            "land_cover": _skewed_class(rng, (cell * 7919) % 17, 17),
            "climate": _skewed_class(rng, (cell * 104729) % 30, 30),
            "soil": _skewed_class(rng, (cell * 1299709) % 10, 10),
        })
        emb = 0.6 * c_vec[which] + rng.standard_normal((m, dim), dtype=np.float32)
        writer.write_shard(emb, meta)
    writer.finalize()




def _child(step: str, store: str, out: str, size: int, strategy: str, seed: int) -> None:
    import tracemalloc

    trace = os.environ.get("CURATE_BENCH_TRACE") == "1"
    if trace:  # numpy reports its buffers to tracemalloc: peak heap without memmapped pages (slow)
        tracemalloc.start()
    t0 = time.perf_counter()
    res: dict = {"step": step, "strategy": strategy}
    if step == "stats":
        from geosolver.curate import DEFAULT_FEATURES, group_size_histogram, group_table
        from geosolver.store import EmbeddingStore

        s = EmbeddingStore(store)
        meta = s.metadata
        res["load_metadata_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        table = group_table(meta, DEFAULT_FEATURES)
        hist = group_size_histogram(table["n_images"].to_numpy())
        res["group_s"] = time.perf_counter() - t1
        res["groups"] = int(len(table))
        res["histogram"] = hist[["bin", "n_groups", "n_images"]].to_dict(orient="records")
    else:
        from geosolver.curate import curate_store

        r, cov = curate_store(store, out, size, strategy=strategy, seed=seed)
        res["phases_s"] = {k: round(v, 2) for k, v in r.timings.items()}
        res["rounds"] = r.rounds
        res["clustered_groups"] = r.n_clustered_groups
        res["coverage"] = cov
    res["total_s"] = time.perf_counter() - t0
    res["peak_rss_mb"] = hwm_mb()
    res["peak_heap_mb"] = tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan")
    print("RESULT " + json.dumps(res, default=str))


def _run_child(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"child failed: {' '.join(cmd)}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--strategies", default="grouped-clustered,grouped,cell,random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/geosolver-curate-bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated store and galleries")
    ap.add_argument("--reuse", action="store_true", help="reuse a store already generated under --work")
    ap.add_argument("--trace-heap", action="store_true",
                    help="also measure peak heap with tracemalloc (slows pandas-heavy steps several-fold)")
    ap.add_argument("--child", nargs=5, metavar=("STEP", "STORE", "OUT", "SIZE", "STRATEGY"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        step, store, out, size, strategy = a.child
        _child(step, store, out, int(size), strategy, a.seed)
        return

    if a.trace_heap:
        os.environ["CURATE_BENCH_TRACE"] = "1"
    work = Path(a.work)
    store = work / f"store-{a.rows}x{a.dim}"
    if not (a.reuse and (store / "manifest.json").exists()):
        shutil.rmtree(store, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        generate(store, a.rows, a.dim, a.seed)
        print(f"generated {a.rows:,} rows x {a.dim} in {time.perf_counter() - t:.1f}s")
    results = [_run_child("stats", str(store), "-", "0", "-")]
    for strategy in a.strategies.split(","):
        out = work / f"gallery-{strategy}"
        shutil.rmtree(out, ignore_errors=True)
        results.append(_run_child("select", str(store), str(out), str(a.size), strategy))

    st = results[0]
    print(f"\n{a.rows:,} rows x {a.dim}-d float16; {st['groups']:,} groups by cell,land_cover,climate,soil")
    print(pd.DataFrame(st["histogram"]).to_string(index=False))
    print(f"\n| step | strategy | total s | phases (s) | peak RSS MB | peak heap MB | cells 2deg | land median km |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| stats | - | {st['total_s']:.1f} | load {st['load_metadata_s']:.1f}, group {st['group_s']:.1f} "
          f"| {st['peak_rss_mb']:.0f} | {st['peak_heap_mb']:.0f} | | |")
    for r in results[1:]:
        cov = r["coverage"]
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
        print(f"| select {a.size:,} | {r['strategy']} | {r['total_s']:.1f} | {phases} | {r['peak_rss_mb']:.0f} | {r['peak_heap_mb']:.0f} "
              f"| {cov['after']['cells_covered']:,} / {cov['before']['cells_covered']:,} "
              f"| {cov['after']['land_median_km']:.0f} / {cov['before']['land_median_km']:.0f} |")
    (work / f"results-{a.rows}x{a.dim}{'-heap' if a.trace_heap else ''}.json").write_text(json.dumps(results, indent=2, default=str))
    if not a.keep:
        shutil.rmtree(store, ignore_errors=True)
        for strategy in a.strategies.split(","):
            shutil.rmtree(work / f"gallery-{strategy}", ignore_errors=True)


if __name__ == "__main__":
    main()
