"""Benchmark ``geosolver analyze`` at scale: N images, all N(N-1)/2 pairs, generated embeddings.

Embeddings come from :func:`geosolver.analysis.synthetic.geo_embeddings` (random Fourier features
of the location + noise, so similarity falls with distance), written as float16 stores like
``geosolver embed`` does. ``analyze_stores`` runs in a child process so its peak RSS is its own.
Prints a markdown table: N, dim, encoders, pairs, seconds per stage (from ``stats.json``
``timings``), total seconds, peak RSS of the analysis, load average before → after — and beside
it **the limit**: one float32 matmul of the same FLOPs (``N × d`` by ``d × N/2``: the similarity of
every pair once, per encoder), timed in the same way just before and just after the analysis
(their mean), and the ratios analysis / limit and pair pass / limit (the part the pair
statistics code controls; the rest is loading, Spearman, diagnostics and the report). On a
shared machine wall times move with the other load; the CPU seconds of the analysis (its
process, all threads) against the CPU seconds of the same matmuls move much less.

    python benchmarks/analysis.py                 # N = 20 000, d = 768, one encoder
    python benchmarks/analysis.py --n 5000 --encoders 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time

import numpy as np
import pandas as pd


def _analyze(paths: list[str], out: str, n: int, block: int) -> None:
    from geosolver.analysis import analyze_stores

    analyze_stores(paths, out, sample=n, block=block, progress=False)


def sgemm_seconds(n: int, dim: int, encoders: int) -> tuple[float, float]:
    """Wall and CPU seconds of float32 matmuls with the FLOPs of the pair pass (``n·(n/2)·dim``
    multiply-adds per encoder)."""
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    half = np.ascontiguousarray(x[: n // 2])
    t, c = time.perf_counter(), time.process_time()
    for _ in range(encoders):
        x @ half.T
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description="Time geosolver analyze on generated embeddings.")
    ap.add_argument("--n", type=int, default=20_000, help="images (all pairs are analysed)")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--encoders", type=int, default=1, help="stores analysed side by side")
    ap.add_argument("--block", type=int, default=256)
    args = ap.parse_args()

    from geosolver.analysis.synthetic import geo_embeddings
    from geosolver.geo import random_points_on_sphere
    from geosolver.store import write_store

    lat, lon = random_points_on_sphere(args.n, 0)
    meta = pd.DataFrame({"id": np.arange(args.n).astype(str), "lat": lat, "lon": lon})
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k in range(args.encoders):
            p = f"{tmp}/store{k}"
            write_store(p, geo_embeddings(lat, lon, args.dim, signal=1.0 + k, rng=k), meta, {"name": f"synthetic-{k}", "dim": args.dim})
            paths.append(p)
        load0 = os.getloadavg()[0]
        limit0, cpu_limit0 = sgemm_seconds(args.n, args.dim, args.encoders)
        t = time.perf_counter()
        proc = mp.get_context("spawn").Process(target=_analyze, args=(paths, f"{tmp}/out", args.n, args.block))
        proc.start()
        proc.join()
        wall = time.perf_counter() - t
        if proc.exitcode != 0:
            raise SystemExit(f"analysis failed (exit {proc.exitcode})")
        limit1, cpu_limit1 = sgemm_seconds(args.n, args.dim, args.encoders)
        limit, cpu_limit = 0.5 * (limit0 + limit1), 0.5 * (cpu_limit0 + cpu_limit1)
        load1 = os.getloadavg()[0]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_mb = usage.ru_maxrss / 1024
        cpu = usage.ru_utime + usage.ru_stime
        res = json.loads(open(f"{tmp}/out/stats.json").read())
    tm = res["timings"]
    cols = ["N", "dim", "encoders", "pairs", "load s", "pair pass s", "spearman s", "diagnostics s", "report s", "total s", "sgemm limit s", "total / limit", "pair pass / limit", "CPU s", "sgemm CPU s", "CPU / sgemm CPU", "peak RSS MB", "load avg"]
    vals = [
        f"{args.n:,}", str(args.dim), str(args.encoders), f"{res['n_pairs']:,}",
        *(f"{tm.get(k, 0):.1f}" for k in ("load_s", "pairs_s", "spearman_s", "diagnostics_s", "report_s")),
        f"{wall:.1f}", f"{limit:.1f}", f"{wall / limit:.1f}×", f"{tm.get('pairs_s', 0) / limit:.1f}×",
        f"{cpu:.1f}", f"{cpu_limit:.1f}", f"{cpu / cpu_limit:.1f}×", f"{rss_mb:.0f}", f"{load0:.1f} → {load1:.1f}",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    print("| " + " | ".join(vals) + " |")
    print(f"({os.cpu_count()} CPU cores, shared; Spearman: {res['spearman_method']})")


if __name__ == "__main__":
    main()
