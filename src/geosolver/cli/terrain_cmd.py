"""``geosolver terrain build``: render a terrain world (map tiles of real land cover + climate); the options
are :class:`~geosolver.terrain.config.TerrainConfig`'s fields."""

from __future__ import annotations

import argparse

from geosolver.cli import summary
from geosolver.cli.args import add_config_arguments, config_from_args
from geosolver.terrain.config import TerrainConfig


def register(sub) -> None:
    p = sub.add_parser(
        "terrain",
        help=summary("terrain"),
        description="The terrain world: a geolocation task rendered from MODIS land cover and Koppen-Geiger "
        "climate around GeoNames places. Its scores are not comparable with street-view benchmarks.",
    )
    tsub = p.add_subparsers(dest="terrain_command", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="render gallery and query tiles and write gallery.csv / queries.csv")
    add_config_arguments(b, TerrainConfig)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.terrain import run as build

    w = build(config_from_args(TerrainConfig, args))
    c, s = w.counts, w.seconds
    print(f"terrain world in {args.out}: {c['gallery']} gallery + {c['queries']} query tiles "
          f"({args.split}; queries from {args.queries_from}, gallery from {args.gallery_from}; {c['gallery_cells']} gallery cells, {c['query_cells']} query cells, "
          f"{c['gallery_countries']} gallery countries) in {s['total']:.1f} s (tiles {s['tiles']:.1f} s)")
    if "mp16" in c:
        m = c["mp16"]
        print(f"  MP-16: {m['usable']} of {m['pool']} points usable ({m['dropped_sea_or_no_raster']} in the sea or outside "
              f"raster coverage, {m['dropped_by_split']} excluded by the split); drew {m['drawn']}")
    print(f"  {args.out}/gallery.csv, {args.out}/queries.csv, {args.out}/world.json")
    return 0
