"""``geosolver curate``: group statistics and gallery selection (logic in :mod:`geosolver.curate`)."""

from __future__ import annotations

import argparse
import json

from geosolver.cli import summary
from geosolver.cli.args import add_overwrite_option, non_negative_int, positive_float, positive_int


def _features(s: str) -> list[str]:
    return [c.strip() for c in s.split(",") if c.strip()]


def register(sub) -> None:
    from geosolver.curate import DEFAULT_FEATURES, STRATEGIES

    p = sub.add_parser("curate", help=summary("curate"),
                       description="Group-size statistics and round-robin gallery selection.")
    csub = p.add_subparsers(dest="curate_command", metavar="ACTION")
    default_by = ",".join(DEFAULT_FEATURES)

    st = csub.add_parser("stats", help="number of groups and images per group")
    st.add_argument("store", help="embedding store directory")
    st.add_argument("--by", type=_features, default=None,
                    help=f"comma-separated feature columns to group by (default {default_by}); absent ones are skipped")
    st.add_argument("--top", type=non_negative_int, default=10, help="also print the N largest groups (default 10; 0 = none)")
    st.set_defaults(func=run_stats)

    se = csub.add_parser("select", help="choose a gallery of N images and write it as a new store")
    se.add_argument("store", help="embedding store directory")
    se.add_argument("--size", type=positive_int, required=True, help="images in the gallery")
    se.add_argument("--out", required=True, help="gallery store directory to create")
    add_overwrite_option(se)
    se.add_argument("--by", type=_features, default=None,
                    help=f"comma-separated feature columns to group by (default {default_by})")
    se.add_argument("--strategy", choices=STRATEGIES, default="grouped-clustered", help="selection strategy")
    se.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    se.add_argument("--cluster-threshold", type=positive_int, default=20,
                    help="cluster only groups larger than this (default 20)")
    se.add_argument("--cell-size", type=positive_float, default=2.0, help="grid cell size in degrees for --strategy cell (default 2)")
    se.add_argument("--land-points", type=positive_int, default=2000,
                    help="random land points for the coverage distance (default 2000; 0 = skip)")
    se.add_argument("--no-map", action="store_true", help="do not draw map.png")
    se.set_defaults(func=run_select)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_stats(args: argparse.Namespace) -> int:
    from geosolver.curate import format_histogram, group_size_histogram, group_table
    from geosolver.store import EmbeddingStore

    store = EmbeddingStore(args.store)
    table = group_table(store.metadata, args.by)
    feats = [c for c in table.columns if c != "n_images"]
    hist = group_size_histogram(table["n_images"].to_numpy())
    print(f"{len(store):,} images in {len(table):,} groups by {','.join(feats)}")
    print(format_histogram(hist))
    if args.top > 0 and len(table):
        print(f"\nlargest {min(args.top, len(table))} groups:")
        print(table.head(args.top).to_string(index=False))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from geosolver.curate import curate_store, format_coverage

    res, cov = curate_store(args.store, args.out, args.size, by=args.by, strategy=args.strategy, seed=args.seed,
                            cluster_threshold=args.cluster_threshold, cell_size=args.cell_size,
                            land_points=args.land_points, make_map=not args.no_map)
    taken = res.per_group_counts
    print(f"chose {res.rows.size:,} images with strategy {res.strategy} (seed {args.seed}) "
          f"from {int((taken > 0).sum()):,} of {len(taken):,} groups"
          + (f" by {','.join(res.by)}" if res.by else "")
          + (f"; {res.rounds} round(s), {res.n_clustered_groups:,} group(s) clustered" if res.rounds else ""))
    print(format_coverage(cov["before"], cov["after"]))
    print(f"gallery written to {args.out} (curation.json, coverage.json, config.json"
          + ("" if args.no_map else ", map.png") + ")")
    print("timings (s): " + json.dumps({k: round(v, 2) for k, v in res.timings.items()}))
    return 0
