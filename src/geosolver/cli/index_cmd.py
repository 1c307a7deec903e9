"""``geosolver index build STORE``: build and save a faiss kNN index next to a store."""

from __future__ import annotations

import argparse
import time

from geosolver.cli.args import non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.index import KINDS

    p = sub.add_parser("index", help="build a kNN index (faiss) over an embedding store")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build STORE/index-<kind>.faiss (+ .json settings)")
    b.add_argument("store", help="embedding store directory (the gallery)")
    b.add_argument("--kind", choices=KINDS, default="flat", help="flat = exact (default); ivf / ivfpq = approximate, for millions of rows")
    b.add_argument("--nlist", type=positive_int, default=None, help="IVF cells (default ~4*sqrt(rows))")
    b.add_argument("--pq-m", type=positive_int, default=None, help="PQ bytes per vector for ivfpq (must divide dim; default 64 or the largest divisor)")
    b.add_argument("--nprobe", type=positive_int, default=None, help="cells visited per query (default nlist/16)")
    b.add_argument("--rerank", type=non_negative_int, default=10, help="ivfpq: re-score rerank*k PQ candidates with the exact vectors from the store (0 = off; default 10)")
    b.add_argument("--train-size", type=positive_int, default=None, help="rows sampled to train IVF/PQ")
    b.add_argument("--threads", type=positive_int, default=None, help="faiss OpenMP threads")
    b.add_argument("--memory-budget-gb", type=positive_float, default=None, help="ivfpq: choose nlist (~4*sqrt(n), power of 2) and pq_m (largest divisor of dim <= 64) to fit this RAM budget")
    b.add_argument("--recall-queries", type=non_negative_int, default=None, help="measure recall@10 vs exact search on this many store rows (default 1000 for ivf/ivfpq, 0 for flat)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.index import build_index

    t0 = time.time()
    idx = build_index(
        args.store, kind=args.kind, nlist=args.nlist, pq_m=args.pq_m, nprobe=args.nprobe,
        rerank=args.rerank, train_size=args.train_size, threads=args.threads,
        memory_budget_gb=args.memory_budget_gb,
        recall_queries=args.recall_queries if args.recall_queries is not None else (0 if args.kind == "flat" else 1000),
    )
    path = idx.save()
    print(f"built {idx.kind} index over {len(idx):,} rows (dim {idx.dim}) in {time.time() - t0:.1f} s -> {path}")
    if "recall_at_10" in idx.settings:
        print(f"recall@10 vs exact search: {idx.settings['recall_at_10']:.3f} over {idx.settings['recall_queries']} store rows as queries "
              f"({idx.settings['queries_per_s']:.0f} queries/s)")
    print(f"settings: {dict((k, v) for k, v in idx.settings.items() if k != 'recall_query_rows')}")
    return 0
