"""Scale-out benchmark: local vs Ray engine throughput, and IVF-PQ at 5 M × 768. Prints one table.

1. **Engines**: the same generated JPEGs (a folder dataset) embedded by the same randomly
   initialised CLIP (ViT-B/32-sized vision tower: 768 wide, 12 layers, patch 32, 224 px; tiny text
   tower) with the local engine (DataLoader, ``--num-workers``) and the Ray engine (local Ray with
   ``--ray-cpus`` CPUs: decode tasks + 1 CPU embedding actor). images/s = rows / seconds of the
   embedding call (Ray start-up excluded; reported separately).
2. **IVF-PQ at 5 M**: a 5 M × 768 float16 store of clustered unit vectors is generated shard by
   shard (7.7 GB on disk, never all in RAM), then ``build_index(kind="ivfpq",
   memory_budget_gb=4)`` runs in a **child process**; its peak anonymous memory (``RssAnon``
   sampled every 0.1 s, minus the value before the build) is reported with the index size on
   disk. ``VmHWM`` is shown too: it also counts the store's memmapped file pages read while adding
   (reclaimable page cache, ~ the whole store), so it overstates what the index needs.
3. **Recall / speed at 1 M**: the first 1 M rows (a store that hard-links the first shards) get an
   IVF-PQ index (same rule); recall@10 against exact streamed brute force on 1000 store rows as
   queries, and queries/s of IVF-PQ (with and without exact re-ranking) vs the exact search.

``--nlist`` overrides the rule's nlist (the rule gives 8192 at 5 M and 4096 at 1 M; k-means with
that many centroids takes hours on a 2-core CPU — say so when you use it).

Usage::

    OMP_NUM_THREADS=2 python benchmarks/scale.py --workdir /tmp/scale_bench [--rows 5000000] [--nlist 1024]
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

from _common import hwm_mb
from embed_throughput import VIT_B32, save_random_clip
import pandas as pd




# --------------------------------------------------------------------------- engines
def make_images(root: Path, n: int, size=(320, 240)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / "img" / f"{i:05d}.jpg", quality=90)
        rows.append({"path": f"img/{i:05d}.jpg", "latitude": float(rng.uniform(-60, 70)), "longitude": float(rng.uniform(-180, 179))})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)




def _vitb32(path: Path) -> str:
    return str(save_random_clip(path, VIT_B32, 512))


def bench_engines(work: Path, n_images: int, ray_cpus: int, workers: int) -> list[dict]:
    import torch

    from geosolver.data import read_dataset
    from geosolver.embed import embed
    from geosolver.encoders import load_encoder

    torch.set_num_threads(1)
    ds = work / "images"
    if not (ds / "metadata.csv").exists():
        make_images(ds, n_images)
    model = _vitb32(work / "vitb32") if not (work / "vitb32" / "config.json").exists() else str(work / "vitb32")
    table = read_dataset("folder", ds)
    enc = load_encoder(model, device="cpu", precision="fp32")
    out = []
    res = embed(table, enc, work / f"local-{time.time_ns()}", batch_size=16, num_workers=workers, shard_size=32, progress=False)
    out.append({"engine": f"local (DataLoader, {workers} worker(s), torch 1 thread)", "images": res.rows_embedded, "seconds": res.seconds})
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    try:
        res = embed(table, enc, work / f"ray-{time.time_ns()}", engine="ray", batch_size=16, shard_size=32, progress=False)
    finally:
        ray.shutdown()
    out.append({"engine": f"ray (local, {ray_cpus} CPUs: 1 actor decoding + embedding whole chunks; ray.init {t_init:.1f}s not counted)",
                "images": res.rows_embedded, "seconds": res.seconds})
    return out


# --------------------------------------------------------------------------- big store
def make_store(path: Path, rows: int, dim: int, shard: int = 250_000, seed: int = 0) -> None:
    """Clustered unit vectors (4096 centres + noise), written shard by shard as float16."""
    from tqdm.auto import tqdm

    from geosolver.store import StoreWriter

    if (path / "manifest.json").exists() and json.loads((path / "manifest.json").read_text()).get("complete"):
        return
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4096, dim)).astype(np.float32)
    w = StoreWriter(path, {"name": "synthetic-clustered", "dim": dim}, config={"rows": rows}, resume=False)
    for s in tqdm(range(0, rows, shard), desc="generate store", unit="shard"):
        n = min(shard, rows - s)
        x = centers[rng.integers(0, len(centers), n)]
        x += 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
        meta = pd.DataFrame({"id": np.arange(s, s + n).astype(str), "lat": np.zeros(n), "lon": np.zeros(n)})
        w.write_shard(x, meta)
        del x
    w.finalize()


def head_store(src: Path, dst: Path, rows: int) -> None:
    """A store of the first ``rows`` rows of ``src`` (whole shards, hard-linked)."""
    if (dst / "manifest.json").exists():
        return
    m = json.loads((src / "manifest.json").read_text())
    keep, total = [], 0
    for s in m["shards"]:
        if total >= rows:
            break
        keep.append(s)
        total += s["rows"]
    dst.mkdir(parents=True)
    for s in keep:
        for ext in ("npy", "parquet"):
            os.link(src / f"{s['name']}.{ext}", dst / f"{s['name']}.{ext}")
    m.update(shards=keep, rows=total, n_inputs=total)
    (dst / "manifest.json").write_text(json.dumps(m))


class AnonPeak:
    """Peak ``RssAnon`` (MB) of this process, sampled every 0.1 s in a thread: the heap (numpy,
    faiss) without the store's memmapped file pages, which ``VmHWM`` would count."""

    def __init__(self):
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.1)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._sample())


def child_build(store: str, budget: float, nlist: int | None, recall_queries: int, threads: int) -> None:
    """Runs in a child process: build + save, print JSON with peak memory."""
    from geosolver.index import build_index

    base = AnonPeak()._sample()
    t0 = time.perf_counter()
    with AnonPeak() as mem:
        idx = build_index(store, kind="ivfpq", memory_budget_gb=budget, nlist=nlist, threads=threads, recall_queries=0, progress=False)
    build_s = time.perf_counter() - t0
    peak = mem.peak - base
    path = idx.save()
    res = {"build_s": build_s, "peak_anon_mb": peak, "peak_hwm_mb": hwm_mb(), "index_mb": os.path.getsize(path) / 1e6,
           "nlist": idx.settings["nlist"], "pq_m": idx.settings["pq_m"], "estimated_mb": idx.settings["estimated_bytes"] / 1e6}
    if recall_queries:
        from geosolver.index import exact_topk, measure_recall
        from geosolver.store import EmbeddingStore

        st = EmbeddingStore(store)
        idx.set_nprobe(max(1, idx.settings["nlist"] // 16))
        for rerank in (10, 0):
            idx.settings["rerank"] = rerank
            r = measure_recall(idx, st, n_queries=recall_queries)
            res[f"recall_rerank{rerank}"] = r["recall_at_10"]
            res[f"qps_rerank{rerank}"] = r["queries_per_s"]
        q = st.embeddings(np.asarray(r["recall_query_rows"]))
        t0 = time.perf_counter()
        exact_topk(st, q, 10)
        res["exact_qps"] = len(q) / (time.perf_counter() - t0)
        res["nprobe"] = idx.settings["nprobe"]
    print("RESULT " + json.dumps(res))


def run_child(store: Path, budget: float, nlist: int | None, recall_queries: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "_child", str(store), str(budget), str(nlist or 0), str(recall_queries), str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not lines:
        raise RuntimeError(f"child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        store, budget, nlist, rq, threads = sys.argv[2:7]
        child_build(store, float(budget), int(nlist) or None, int(rq), int(threads))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/geosolver-scale-bench")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--budget-gb", type=float, default=4.0)
    ap.add_argument("--nlist", type=int, default=None, help="override the rule's nlist (CPU time)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", choices=["engines", "index"], action="append", default=[])
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["| measurement | value |", "|---|---|"]
    if "engines" not in args.skip:
        for r in bench_engines(work, args.images, args.ray_cpus, args.workers):
            lines.append(f"| {r['engine']} | {r['images'] / r['seconds']:.2f} images/s ({r['images']} images in {r['seconds']:.1f} s) |")
        print("\n".join(lines), flush=True)
    if "index" not in args.skip:
        big = work / f"store-{args.rows}x{args.dim}"
        t0 = time.perf_counter()
        make_store(big, args.rows, args.dim)
        gen_s = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in big.glob("*.npy")) / 1e9
        r5 = run_child(big, args.budget_gb, args.nlist, 0, args.threads)
        lines += [
            f"| store {args.rows:,} x {args.dim} float16 | {disk:.2f} GB of .npy on disk (generated in {gen_s:.0f} s) |",
            f"| IVF-PQ build, budget {args.budget_gb} GB: nlist={r5['nlist']} pq_m={r5['pq_m']} | {r5['build_s']:.0f} s, peak anonymous memory +{r5['peak_anon_mb']:.0f} MB (plan estimate {r5['estimated_mb']:.0f} MB; VmHWM incl. memmapped store pages {r5['peak_hwm_mb']:.0f} MB) |",
            f"| IVF-PQ index size on disk | {r5['index_mb']:.0f} MB |",
        ]
        print("\n".join(lines), flush=True)
        one_m = work / "store-1M-head"
        head_store(big, one_m, 1_000_000)
        r1 = run_child(one_m, args.budget_gb, args.nlist, 1000, args.threads)
        lines += [
            f"| 1 M: IVF-PQ nlist={r1['nlist']} pq_m={r1['pq_m']} nprobe={r1['nprobe']}, rerank 10·k | recall@10 {r1['recall_rerank10']:.3f}, {r1['qps_rerank10']:.0f} queries/s |",
            f"| 1 M: same, no rerank | recall@10 {r1['recall_rerank0']:.3f}, {r1['qps_rerank0']:.0f} queries/s |",
            f"| 1 M: exact (numpy, streamed store) | recall 1.000, {r1['exact_qps']:.1f} queries/s |",
        ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
