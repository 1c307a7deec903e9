"""``geosolver index build STORE``: build and save a faiss kNN index next to a store.

The options are derived from :class:`geosolver.index.BuildConfig` (a setting is declared once)."""

from __future__ import annotations

import argparse
import sys

from geosolver.cli import summary
from geosolver.cli.args import add_config_arguments, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.index import BuildConfig  # faiss-, numpy- and pandas-free; still not at `geosolver --help` start-up

    p = sub.add_parser("index", help=summary("index"))
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="build STORE/index-<kind>.faiss (+ .json settings)")
    add_config_arguments(b, BuildConfig)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.index import BuildConfig, build

    cfg = config_from_args(BuildConfig, args)
    cfg.progress = sys.stderr.isatty()
    res = build(cfg)
    idx = res.index
    path = idx.save()
    print(f"built {idx.kind} index over {len(idx):,} rows (dim {idx.dim}) in {res.seconds:.1f} s -> {path}")
    for t in res.tuning:
        print(f"  tuning: nprobe {t['nprobe']:>5}  rerank {t['rerank'] if t['rerank'] is not None else '-':>3}  recall@10 {t['recall']:.3f}  {t['queries_per_s']:,.0f} queries/s")
    if res.recall:
        print(f"recall@10 vs exact search: {res.recall['recall_at_10']:.3f} over {res.recall['recall_queries']} held-out store rows as queries "
              f"({res.recall['queries_per_s']:.0f} queries/s)")
    print(f"settings: {dict((k, v) for k, v in idx.settings.items() if not k.endswith('query_rows'))}")
    return 0
