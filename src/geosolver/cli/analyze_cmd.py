"""``geosolver analyze``: similarity-vs-distance analysis and collapse diagnostics of embedding stores."""

from __future__ import annotations

import argparse

from geosolver.cli.args import add_overwrite_option, non_negative_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="how well do encoders' embeddings reflect geography? (plots, correlations, diagnostics)",
        description=(
            "Analyse one or more embedding stores of the same images (one per encoder): cosine similarity "
            "vs great-circle distance (density plot, binned mean, ideal monotone curve), Pearson/Spearman, "
            "false friends, similarity distribution, collapse diagnostics. Writes report.html, report.md, "
            "PNGs, stats.json, config.json and curve_<name>.json into --out."
        ),
    )
    p.add_argument("stores", nargs="+", metavar="STORE", help="embedding store directories (one per encoder)")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_option(p)
    p.add_argument("--sample", type=positive_int, default=5000, help="N images; all N(N-1)/2 pairs are analysed (default 5000)")
    p.add_argument("--pairs", type=positive_int, default=None, help="instead: M random pairs drawn from all shared images")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--names", default=None, help="comma-separated display names, one per store")
    p.add_argument("--block", type=positive_int, default=256, help="rows per block of the pair pass (default 256; memory ≈ block × N × 100 bytes)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.analysis import analyze_stores
    from geosolver.analysis.report import table_rows

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    res = analyze_stores(
        args.stores, args.out, sample=args.sample, pairs=args.pairs, seed=args.seed, names=names,
        block=args.block, progress=not args.no_progress,
    )
    header, rows = table_rows(res)
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))))
    print(f"\n{res['n_pairs']:,} pairs, {res['seconds']:.1f} s; Spearman: {res['spearman_method']}")
    print(f"report: {args.out}/report.html")
    return 0
