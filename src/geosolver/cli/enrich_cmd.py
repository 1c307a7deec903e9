"""``geosolver enrich STORE``: add country / climate / land cover / land flag / grid cell columns."""

from __future__ import annotations

import argparse

from geosolver.cli import summary
from geosolver.geodata import FEATURES
from geosolver.cli.args import positive_float


def register(sub) -> None:
    p = sub.add_parser(
        "enrich",
        help=summary("enrich"),
        description="Add columns derived from each row's coordinates to an embedding store's metadata, offline. "
        "Existing columns are kept unless --overwrite.",
    )
    p.add_argument("store", help="embedding store directory")
    p.add_argument("--features", default=",".join(FEATURES), help=f"comma-separated subset of {','.join(FEATURES)} (default: all)")
    p.add_argument("--cell-size", type=positive_float, default=2.0, help="grid cell side in degrees for the 'cell' column (default 2.0)")
    p.add_argument("--overwrite", action="store_true", help="recompute columns that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.enrich import enrich_store

    added = enrich_store(args.store, args.features, cell_size=args.cell_size, overwrite=args.overwrite, progress=not args.no_progress)
    if added:
        print(f"added column(s) to {args.store}: {', '.join(added)}")
    else:
        print(f"nothing to add to {args.store}: every requested column exists (use --overwrite to recompute)")
    return 0
