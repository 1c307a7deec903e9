"""``geosolver evaluate`` (metrics of a query store against a gallery) and ``geosolver compare``."""

from __future__ import annotations

import argparse

from geosolver.cli.args import non_negative_int, positive_float, positive_int


def _csv(typ):
    def parse(s: str):
        try:
            return [typ(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {s!r}") from None

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.evaluate import DEFAULT_KS
    from geosolver.index import KINDS
    from geosolver.locate import DEFAULT_RADIUS_KM, DEFAULT_TEMPERATURE, STRATEGIES

    p = sub.add_parser("evaluate", help="locate every query of a store in a gallery and report Geoscore etc.")
    p.add_argument("--queries", required=True, help="query embedding store (true lat/lon)")
    p.add_argument("--gallery", required=True, help="gallery embedding store")
    p.add_argument("--strategy", type=_csv(str), default=list(STRATEGIES), help=f"comma-separated, of {','.join(STRATEGIES)} (default all)")
    p.add_argument("--k", type=_csv(int), default=list(DEFAULT_KS), help=f"comma-separated neighbour counts (default {','.join(map(str, DEFAULT_KS))})")
    p.add_argument("--exclude-self", action="store_true", help="leave-one-out: skip gallery rows with the query's id")
    p.add_argument("--temperature", type=positive_float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--radius-km", type=positive_float, default=DEFAULT_RADIUS_KM)
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF cells visited per query")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap repetitions for the 95%% interval")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)

    c = sub.add_parser("compare", help="several evaluation runs in one table")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--all", action="store_true", help="every (strategy, k) row, not only each run's best")
    c.add_argument("--out", default=None, help="also write the markdown table to this file")
    c.set_defaults(func=run_compare)


def run(args: argparse.Namespace) -> int:
    from geosolver.evaluate import evaluate, metrics_markdown

    res = evaluate(
        args.queries, args.gallery, strategies=args.strategy, ks=args.k, exclude_self=args.exclude_self,
        out=args.out, temperature=args.temperature, radius_km=args.radius_km, index_kind=args.index,
        bootstrap=args.bootstrap, seed=args.seed, plots=not args.no_plots, nprobe=args.nprobe,
    )
    print(metrics_markdown(res))
    print(f"\nwrote {args.out}/: metrics.json metrics.md predictions.parquet config.json" + ("" if args.no_plots else " errors_map.png errors_hist.png"))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from geosolver.evaluate import compare_runs
    from geosolver.files import atomic_write_text

    _, md = compare_runs(args.runs, all_rows=args.all)
    print(md)
    if args.out:
        atomic_write_text(args.out, md + "\n")
    return 0
