"""Approximate index within a RAM budget, beside its peers: memory, recall@10, queries/s. Prints tables.

A synthetic store (float16, written shard by shard, never all in RAM; ``--data latent``: clustered
points of a 64-d latent space projected to ``dim`` + 2 % noise, as ``benchmarks/knn.py`` makes;
``--data isotropic``: 256 centres + isotropic noise) is indexed by each method in its **own child
process**, so each memory figure is its own:

* ``geosolver ivfpq``: the real command line, ``geosolver index build STORE --kind ivfpq
  --memory-budget-gb B`` (training, adding, the nprobe / rerank tuning on held-out rows and the
  recall report included, as a user runs it), then the saved index loaded and searched;
* ``faiss HNSW32``: ``IndexHNSWFlat(d, 32)`` (inner product), efSearch tuned the same way (the
  smallest of 16 … 512 reaching the target recall on the same kind of held-out rows);
* ``faiss flat``: ``IndexFlatIP`` (= geosolver's ``flat`` kind): exact, the recall ceiling.

Memory: the child imports everything and reports ready; its RSS then is the baseline. psutil samples
the child's RSS every 10 ms while it builds and then searches 1000 queries; "peak growth" = max RSS
− baseline. RSS counts everything resident: anonymous memory (numpy, faiss) and the store's
memmapped file pages (the anonymous part alone is shown too).

Speed: afterwards **one** process loads every saved index and searches the same 1000 store rows
(another seed than any tuning sample) with each method in turn, ``--rounds`` times (A, B, C, A, B, C
…), so a change of machine load hits all alike; median queries/s, recall@10 against exact search,
and the ratio to the faiss HNSW peer. The load average is printed.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/index_memory.py --workdir /tmp/index_mem [--rows 300000] [--dim 768] [--budget 1.0] [--data latent]
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

from knn import make_centres, write_gallery

METHODS = ("geosolver ivfpq", "faiss HNSW32", "faiss flat")
K = 10


def make_store(path: Path, rows: int, dim: int, shard_size: int, data: str, seed: int = 0):
    from geosolver.store import EmbeddingStore, StoreWriter

    if (path / "manifest.json").exists():
        st = EmbeddingStore(path)
        if len(st) == rows and st.dim == dim and st.complete:
            return st
    if data == "latent":
        return write_gallery(path, rows, make_centres(256, dim, seed=1), shard=shard_size)
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


def query_rows(n: int, seed: int = 12345) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(1000, n), replace=False))


# ------------------------------------------------------------------ child: build one method
def child(method: str, store_path: str, out: str, budget: float, target: float) -> None:
    import faiss

    from geosolver.cli import main as cli_main
    from geosolver.index import exact_topk, load_index, recall_at
    from geosolver.store import EmbeddingStore

    print("READY", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    store = EmbeddingStore(store_path)
    res: dict = {}
    if method == "geosolver ivfpq":
        rc = cli_main(["index", "build", store_path, "--kind", "ivfpq", "--memory-budget-gb", str(budget), "--target-recall", str(target)])
        if rc:
            raise SystemExit(rc)
        res["build_s"] = time.perf_counter() - t0
        idx = load_index(Path(store_path) / "index-ivfpq.faiss")
        idx.search(store.embeddings(query_rows(len(store))), K)  # the search-time state (re-rank copy) is part of the footprint
        res["settings"] = {k: v for k, v in idx.settings.items() if not k.endswith("query_rows")}
    else:
        d = store.dim
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT) if method == "faiss HNSW32" else faiss.IndexFlatIP(d)
        for _, batch in store.iter_batches(65536):
            index.add(batch)
        res["build_s"] = time.perf_counter() - t0
        if method == "faiss HNSW32":  # efSearch tuned like geosolver's nprobe: the smallest reaching the target on held-out rows
            tune = np.sort(np.random.default_rng(7).choice(len(store), size=min(1000, len(store)), replace=False))
            qt = store.embeddings(tune)
            exact = exact_topk(store, qt, K)
            for ef in (16, 32, 64, 128, 256, 512):
                index.hnsw.efSearch = ef
                if recall_at(index.search(qt, K)[1], exact) >= target:
                    break
            res["settings"] = {"efSearch": ef, "M": 32}
        index.search(store.embeddings(query_rows(len(store))), K)
        faiss.write_index(index, str(Path(out) / f"{method.replace(' ', '_')}.faiss"))
    print("RESULT " + json.dumps(res), flush=True)


def run_child(method: str, store: Path, out: Path, budget: float, target: float) -> dict:
    cmd = [sys.executable, __file__, "_child", method, str(store), str(out), str(budget), str(target)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    ps = psutil.Process(proc.pid)
    m = ps.memory_info()
    base_rss, base_anon = m.rss, m.rss - m.shared
    peak_rss, peak_anon = base_rss, base_anon
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while proc.poll() is None:
        try:
            m = ps.memory_info()
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_anon = max(peak_rss, m.rss), max(peak_anon, m.rss - m.shared)
        time.sleep(0.01)
    out_text, err = proc.communicate()
    lines = [x for x in out_text.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{out_text[-3000:]}\n{err[-3000:]}")
    return {**json.loads(lines[-1][7:]), "growth": peak_rss - base_rss, "growth_anon": peak_anon - base_anon, "stdout": out_text}


# ------------------------------------------------------------------ parent: one interleaved speed run
def interleaved(store_path: Path, out: Path, rounds: int) -> dict[str, dict]:
    import faiss

    from geosolver.index import exact_topk, load_index, recall_at
    from geosolver.store import EmbeddingStore

    store = EmbeddingStore(store_path)
    q = store.embeddings(query_rows(len(store)))
    exact = exact_topk(store, q, K)
    hnsw = faiss.read_index(str(out / "faiss_HNSW32.faiss"))
    settings = json.loads((out / "settings.json").read_text())
    hnsw.hnsw.efSearch = settings["faiss HNSW32"]["efSearch"]
    flat = faiss.read_index(str(out / "faiss_flat.faiss"))
    ours = load_index(store_path / "index-ivfpq.faiss")
    search = {"geosolver ivfpq": lambda: ours.search(q, K)[1], "faiss HNSW32": lambda: hnsw.search(q, K)[1], "faiss flat": lambda: flat.search(q, K)[1]}
    rec = {m: recall_at(f(), exact) for m, f in search.items()}  # also the warm-up
    qps: dict[str, list[float]] = {m: [] for m in search}
    for _ in range(rounds):
        for m, f in search.items():
            t = time.perf_counter()
            f()
            qps[m].append(len(q) / (time.perf_counter() - t))
    return {m: {"recall": rec[m], "qps": float(np.median(v)), "min": min(v), "max": max(v)} for m, v in qps.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/index_memory_bench")
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--shard-size", type=int, default=10_000, help="rows per shard (embed's default)")
    ap.add_argument("--budget", type=float, default=1.0, help="geosolver's --memory-budget-gb")
    ap.add_argument("--target", type=float, default=0.99, help="recall@10 target for geosolver's tuning and HNSW's efSearch")
    ap.add_argument("--data", choices=["latent", "isotropic"], default="latent")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to (re)build; the speed run needs all three built")
    a = ap.parse_args()
    work = Path(a.workdir)
    store_path = work / f"store-{a.data}-{a.rows}x{a.dim}"
    out = work / f"peers-{a.data}-{a.rows}x{a.dim}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_store(store_path, a.rows, a.dim, a.shard_size, a.data)
    print(f"store {store_path}: {a.rows:,} x {a.dim} float16, {a.data} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    mem_file = out / "memory.json"
    mem = json.loads(mem_file.read_text()) if mem_file.exists() else {}
    for m in a.methods:
        print(f"building {m} ...", file=sys.stderr, flush=True)
        r = run_child(m, store_path, out, a.budget, a.target)
        print(r.pop("stdout"), file=sys.stderr, flush=True)
        mem[m] = r
        mem_file.write_text(json.dumps(mem, indent=1))
    (out / "settings.json").write_text(json.dumps({m: r.get("settings", {}) for m, r in mem.items()}))
    speed = interleaved(store_path, out, a.rounds)
    load = os.getloadavg()
    mb = lambda x: f"{x / 1e6:,.0f} MB"  # noqa: E731
    hn = speed["faiss HNSW32"]["qps"]
    print(f"\n{a.rows:,} × {a.dim} float16 store ({a.data}), budget {a.budget:g} GB, 1000 store rows as queries, k = {K}, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} faiss thread(s)\n")
    print("| method | settings | build s | peak RSS growth (build + search) | anonymous | within budget | recall@10 | queries/s median [min, max] | q/s vs HNSW |")
    print("|---|---|---:|---:|---:|:--|---:|---:|---:|")
    for m in METHODS:
        r, s = mem[m], speed[m]
        st = r.get("settings", {})
        desc = ", ".join(f"{k} {st[k]}" for k in ("nlist", "pq_m", "nprobe", "rerank", "rerank_from", "efSearch", "M") if k in st) or "exact"
        print(f"| {m} | {desc} | {r['build_s']:.0f} | {mb(r['growth'])} | {mb(r['growth_anon'])} | {'yes' if r['growth'] <= a.budget * 1e9 else 'no'} | "
              f"{s['recall']:.3f} | {s['qps']:,.0f} [{s['min']:,.0f}, {s['max']:,.0f}] | {s['qps'] / hn:.2f} |")
    print(f"\nLoad average at the end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
