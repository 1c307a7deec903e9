"""Does ``geosolver index build --kind ivfpq --memory-budget-gb B`` stay inside B? Prints one table.

A synthetic store of clustered unit vectors (float16, written shard by shard with
``geosolver.store.StoreWriter``, never all in RAM) is indexed by the real command line
(``geosolver.cli.main(["index", "build", STORE, "--kind", "ivfpq", "--memory-budget-gb", B])``,
recall measurement included, as a user runs it) in a **child process**. The child imports
everything first and reports ready; its RSS then is the baseline. psutil samples the child's RSS
every 10 ms while it builds; "peak growth" = max RSS − baseline. RSS counts everything resident in
the process: anonymous memory (numpy arrays, faiss buffers) and the store's memmapped file pages
(``shared``); the anonymous part alone is shown too. "estimate" is :func:`geosolver.index.plan_ivfpq`'s
``bytes`` (recorded in the saved index's settings as ``estimated_bytes``).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/index_memory.py --workdir /tmp/index_mem [--rows 300000] [--dim 768] [--budgets 1.0 2.0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

CHILD = r"""
import sys
from geosolver.cli import main
import geosolver.index, faiss, numpy, pandas  # noqa: F401  (imported before the baseline is taken)
print("READY", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def make_store(path: Path, rows: int, dim: int, shard_size: int, seed: int = 0):
    from geosolver.store import StoreWriter

    if (path / "manifest.json").exists():
        from geosolver.store import EmbeddingStore

        st = EmbeddingStore(path)
        if len(st) == rows and st.dim == dim and st.complete:
            return st
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    w = StoreWriter(path, {"name": "synthetic-clustered", "dim": dim, "revision": "1"}, resume=False)
    for s in range(0, rows, shard_size):
        n = min(shard_size, rows - s)
        x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        meta = pd.DataFrame({"id": [f"r{i}" for i in range(s, s + n)], "lat": rng.uniform(-60, 60, n), "lon": rng.uniform(-180, 180, n)})
        w.write_shard(x, meta)
    return w.finalize()


def build_in_child(store: Path, budget: float, extra: list[str]) -> dict:
    for p in store.glob("index-ivfpq.*"):
        p.unlink()
    argv = ["index", "build", str(store), "--kind", "ivfpq", "--memory-budget-gb", str(budget), *extra]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    ps = psutil.Process(proc.pid)
    m = ps.memory_info()
    base_rss, base_anon = m.rss, m.rss - m.shared
    peak_rss, peak_anon = base_rss, base_anon
    t0 = time.time()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while proc.poll() is None:
        try:
            m = ps.memory_info()
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_anon = max(peak_rss, m.rss), max(peak_anon, m.rss - m.shared)
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"index build failed (exit {proc.returncode}):\n{out}\n{err}")
    meta = json.loads((store / "index-ivfpq.json").read_text())
    return {"seconds": time.time() - t0, "growth": peak_rss - base_rss, "growth_anon": peak_anon - base_anon,
            "estimate": meta["settings"].get("estimated_bytes"), "settings": meta["settings"], "stderr": err.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/index_memory_bench")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shard-size", type=int, default=10_000, help="rows per shard (embed's default)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0])
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `index build` options")
    a = ap.parse_args()
    store_path = Path(a.workdir) / f"store-{a.rows}x{a.dim}"
    t0 = time.time()
    make_store(store_path, a.rows, a.dim, a.shard_size)
    print(f"store {store_path}: {a.rows:,} x {a.dim} float16 ({time.time() - t0:.0f} s)", file=sys.stderr)
    print("| rows | dim | budget | estimate | peak RSS growth | (anonymous) | within budget | nlist | pq_m | train | build s |")
    print("|---:|---:|---:|---:|---:|---:|:--|---:|---:|---:|---:|")
    for b in a.budgets:
        r = build_in_child(store_path, b, a.extra)
        s = r["settings"]
        mb = lambda x: f"{x / 1e6:,.0f} MB"  # noqa: E731
        print(f"| {a.rows:,} | {a.dim} | {b:g} GB | {mb(r['estimate'])} | {mb(r['growth'])} | {mb(r['growth_anon'])} | "
              f"{'yes' if r['growth'] <= b * 1e9 else 'NO'} | {s.get('nlist')} | {s.get('pq_m')} | {s.get('train_size')} | {r['seconds']:.0f} |",
              flush=True)
        if r["stderr"]:
            print(f"  stderr: {r['stderr'][:2000]}", file=sys.stderr)


if __name__ == "__main__":
    main()
