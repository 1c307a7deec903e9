"""kNN benchmark: exact faiss vs numpy brute force, and IVF-PQ recall / speed at a million rows.

One run prints one markdown table (and writes it with ``--out``):

1. a 100k × 768 float16 gallery (a real EmbeddingStore in a temp dir), 1000 queries, k=10:
   exact ``IndexFlatIP`` (via :func:`geosolver.index.build_index`) vs numpy (float32 matmul +
   argpartition, queries in chunks of 256);
2. a 1M × 768 gallery written shard by shard (clustered vectors generated in chunks, never all
   in RAM), IVF-PQ built by streaming the store; recall@10 against exact search (numpy, chunked)
   and queries/s, with and without exact re-ranking of 10·k candidates;
3. GPU rows (exact and IVF-PQ) only when ``faiss.get_num_gpus() > 0``.

Memory is the **peak RSS increase** of the process during the step (``VmHWM`` reset through
``/proc/self/clear_refs`` before each step, minus RSS before it), so it counts faiss' C++
allocations too, unlike tracemalloc — and also the store's memmapped pages the step read
(reclaimable page cache). "index MB" is faiss' serialized index size (what it holds in RAM).
Build time includes reading the store.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/knn.py --threads 2 [--n-large 1000000] [--out bench.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import hwm_mb, rss_mb
import pandas as pd






class PeakRss:
    """Context manager: peak RSS increase (MB) during the block."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.before = rss_mb()
        return self

    def __exit__(self, *exc):
        self.mb = max(0.0, hwm_mb() - self.before)


LATENT_DIM = 64


def make_centres(n_clusters: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres in a 64-d latent space and a fixed random projection latent → ``dim``.

    Real image embeddings have a low intrinsic dimension; isotropic 768-d noise instead makes every
    point of a cluster almost equidistant from every other and no ANN method can rank them.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, LATENT_DIM)).astype(np.float32)
    proj = (rng.normal(size=(LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)
    return centres, proj


def clustered_chunk(model: tuple[np.ndarray, np.ndarray], n: int, seed: int, spread: float = 0.5, noise: float = 0.02) -> np.ndarray:
    """``n`` unit vectors: a latent cluster centre + latent spread, projected, + small isotropic noise."""
    centres, proj = model
    rng = np.random.default_rng(seed)
    z = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, LATENT_DIM)).astype(np.float32)
    x = z @ proj + noise * rng.normal(size=(n, proj.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_gallery(path: Path, n: int, centres: np.ndarray, shard: int = 100_000):
    from geosolver.store import StoreWriter

    w = StoreWriter(path, {"name": "bench", "dim": centres[1].shape[1]}, resume=False)
    for s in range(0, n, shard):
        m = min(shard, n - s)
        rng = np.random.default_rng(10_000 + s)
        meta = pd.DataFrame({"id": np.arange(s, s + m).astype(str), "lat": rng.uniform(-60, 60, m), "lon": rng.uniform(-180, 180, m)})
        w.write_shard(clustered_chunk(centres, m, seed=s), meta)
    return w.finalize()


def numpy_topk(batches, q: np.ndarray, k: int, q_chunk: int = 256) -> np.ndarray:
    """Exact top-k rows by brute force over ``(row_offset, float32 block)`` batches, keeping a
    running top-k per query."""
    best_s = np.full((q.shape[0], k), -np.inf, np.float32)
    best_r = np.full((q.shape[0], k), -1, np.int64)
    for off, g in batches:
        for s in range(0, q.shape[0], q_chunk):
            sims = q[s : s + q_chunk] @ g.T
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            cs = np.concatenate([best_s[s : s + q_chunk], np.take_along_axis(sims, part, 1)], 1)
            cr = np.concatenate([best_r[s : s + q_chunk], part + off], 1)
            o = np.argsort(-cs, axis=1)[:, :k]
            best_s[s : s + q_chunk] = np.take_along_axis(cs, o, 1)
            best_r[s : s + q_chunk] = np.take_along_axis(cr, o, 1)
    return best_r


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def timed_search(idx, q, k, reps: int = 1):
    t = time.perf_counter()
    for _ in range(reps):
        _, rows = idx.search(q, k)
    return rows, reps * q.shape[0] / (time.perf_counter() - t)


def interleave_speed(flat, store, q: np.ndarray, k: int, rounds: int) -> list[tuple[str, float, float, float]]:
    """Exact search speed of three methods over the same gallery, taken in turns (A, B, C, A, B, C...)
    so a change in the machine's load hits all of them alike; returns ``(method, median, min, max)``
    queries/s. The gallery is held in RAM as float32 for numpy, as faiss' flat index holds it."""
    g32 = store.embeddings()
    methods = {
        "faiss exact IndexFlatIP (geosolver's `flat` index)": lambda: flat.search(q, k),
        "numpy, queries in chunks of 256 (fp32 matmul + argpartition)": lambda: numpy_topk([(0, g32)], q, k),
        "numpy, all queries in one call": lambda: numpy_topk([(0, g32)], q, k, q_chunk=q.shape[0]),
    }
    runs: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            runs[name].append(q.shape[0] / (time.perf_counter() - t))
    del g32
    return [(m, float(np.median(v)), min(v), max(v)) for m, v in runs.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-small", type=int, default=100_000)
    ap.add_argument("--n-large", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--pq-m", type=int, default=64)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved speed rounds at the small size (default 5)")
    ap.add_argument("--workdir", default=None, help="where the temporary stores go (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)

    import faiss

    from geosolver.index import build_index, num_gpus, set_threads

    set_threads(args.threads)
    rows_out = []

    def row(name, gallery, build_s, qps, rec, mem, size_mb=float("nan")):
        rows_out.append((name, gallery, build_s, qps, rec, mem, size_mb))
        print(f"  {name}: build {build_s:.1f} s, {qps:,.0f} q/s, recall@{args.k} {rec}, +{mem:,.0f} MB peak RSS, index {size_mb:,.0f} MB", file=sys.stderr, flush=True)

    def size_mb(idx) -> float:
        return faiss.serialize_index(idx.cpu_index).size / 2**20

    centres = make_centres(256, args.dim, seed=1)
    q = clustered_chunk(centres, args.queries, seed=999_999_999)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        print(f"writing {args.n_small:,} x {args.dim} gallery", file=sys.stderr, flush=True)
        small = write_gallery(tmp / "small", args.n_small, centres)
        with PeakRss() as m:
            t = time.perf_counter()
            g32 = small.embeddings()  # float32 copy in RAM, like IndexFlatIP
            b = time.perf_counter() - t
            t = time.perf_counter()
            truth = numpy_topk([(0, g32)], q, args.k)
            qps = args.queries / (time.perf_counter() - t)
            del g32
        row("numpy brute force (fp32 matmul + argpartition)", f"{args.n_small:,}", b, qps, "1 (reference)", m.mb)
        with PeakRss() as m:
            t = time.perf_counter()
            flat = build_index(small, "flat", progress=False, gpu=False)
            b = time.perf_counter() - t
            found, qps = timed_search(flat, q, args.k)
        row("faiss exact IndexFlatIP (CPU)", f"{args.n_small:,}", b, qps, f"{recall(found, truth):.3f}", m.mb, size_mb(flat))
        if num_gpus() > 0:
            with PeakRss() as m:
                t = time.perf_counter()
                g = build_index(small, "flat", progress=False, gpu=True)
                b = time.perf_counter() - t
                found, qps = timed_search(g, q, args.k, reps=5)
            row("faiss exact IndexFlatIP (GPU)", f"{args.n_small:,}", b, qps, f"{recall(found, truth):.3f}", m.mb)
        interleaved = interleave_speed(flat, small, q, args.k, args.rounds)
        del flat

        if not args.skip_large:
            print(f"writing {args.n_large:,} x {args.dim} gallery", file=sys.stderr, flush=True)
            large = write_gallery(tmp / "large", args.n_large, centres)
            print("exact reference by streaming brute force", file=sys.stderr, flush=True)
            with PeakRss() as m:
                t = time.perf_counter()
                truth = numpy_topk(large.iter_batches(100_000), q, args.k)
                qps = args.queries / (time.perf_counter() - t)
            row("numpy brute force, streamed from the store (fp16 → fp32 per 100k rows)", f"{args.n_large:,}", 0.0, qps, "1 (reference)", m.mb)
            with PeakRss() as m:
                t = time.perf_counter()
                ivf = build_index(large, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe, train_size=args.train_size, rerank=0, progress=False, gpu=False)
                b = time.perf_counter() - t
                found, qps = timed_search(ivf, q, args.k)
            row(f"faiss IVF-PQ nlist={args.nlist} m={args.pq_m} nprobe={args.nprobe} (CPU)", f"{args.n_large:,}", b, qps, f"{recall(found, truth):.3f}", m.mb, size_mb(ivf))
            ivf.settings["rerank"] = 10
            with PeakRss() as m:
                found, qps = timed_search(ivf, q, args.k)
            row("  + exact re-rank of 10·k candidates from the store memmap", f"{args.n_large:,}", 0.0, qps, f"{recall(found, truth):.3f}", m.mb)
            if num_gpus() > 0:
                with PeakRss() as m:
                    t = time.perf_counter()
                    gi = build_index(large, "ivfpq", nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe, train_size=args.train_size, rerank=0, progress=False, gpu=True)
                    b = time.perf_counter() - t
                    found, qps = timed_search(gi, q, args.k, reps=5)
                row("faiss IVF-PQ (GPU search)", f"{args.n_large:,}", b, qps, f"{recall(found, truth):.3f}", m.mb)

    cpu = os.cpu_count()
    threads = faiss.omp_get_max_threads()
    lines = [
        f"| method | gallery rows | build s | queries/s | recall@{args.k} | peak RSS increase MB | index MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    def mb(x):
        return "–" if x != x else f"{x:,.0f}"

    for name, gal, b, qps, rec, mem, sz in rows_out:
        lines.append(f"| {name} | {gal} | {b:.1f} | {qps:,.0f} | {rec} | {mb(mem)} | {mb(sz)} |")
    lines.append("")
    lines.append(f"Exact search at {args.n_small:,} rows, methods interleaved over {args.rounds} rounds (queries/s, median [min, max]):")
    lines.append("")
    lines.append("| method | queries/s median | min | max |")
    lines.append("|---|---:|---:|---:|")
    for name, med, lo, hi in interleaved:
        lines.append(f"| {name} | {med:,.0f} | {lo:,.0f} | {hi:,.0f} |")
    lines.append("")
    load = os.getloadavg()
    lines.append(f"Machine load average at the end (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores.")
    lines.append("")
    lines.append(
        f"{args.queries} queries, k={args.k}, dim {args.dim}, float16 store, clustered synthetic vectors (256 centres in a 64-d latent space projected to the store dim + 2 % isotropic noise); "
        f"faiss {faiss.__version__}, {threads} faiss thread(s), {cpu} CPU core(s), GPUs seen by faiss: {num_gpus()}. "
        "Memory: peak RSS increase during the step (VmHWM, build + search; it includes the store's memmapped "
        "float16 pages that the step read, which the OS can drop); index MB: faiss' serialized index size. "
        "Timings taken on a CPU shared with other jobs: treat them as rough."
    )
    md = "\n".join(lines)
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
