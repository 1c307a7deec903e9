"""``geosolver terrain build``: render a terrain world (map tiles of real land cover + climate)."""

from __future__ import annotations

import argparse

from geosolver.cli.args import non_negative_int, positive_float, positive_int


def register(sub) -> None:
    from geosolver.terrain import GALLERY_SOURCES, QUERY_DISTRIBUTIONS, SPLITS

    p = sub.add_parser(
        "terrain",
        help="build the offline terrain world (a folder + CSV dataset of rendered map tiles)",
        description="The terrain world: a geolocation task rendered from MODIS land cover and Koppen-Geiger "
        "climate around GeoNames places. Its scores are not comparable with street-view benchmarks.",
    )
    tsub = p.add_subparsers(dest="terrain_command", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="render gallery and query tiles and write gallery.csv / queries.csv")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--gallery", type=positive_int, required=True, help="number of gallery tiles")
    b.add_argument("--queries", type=positive_int, required=True, help="number of query tiles")
    b.add_argument("--split", choices=SPLITS, default="random",
                   help="random: queries drawn like the gallery; held-out-cells: queries only from grid cells absent from the gallery")
    b.add_argument("--queries-from", choices=QUERY_DISTRIBUTIONS, default="population",
                   help="population: query points near GeoNames places, like the gallery (default); land: uniform over "
                   "land area; settlements: uniform over land within 25 km of a GeoNames place (a near-roads proxy)")
    b.add_argument("--gallery-from", choices=GALLERY_SOURCES, default="geonames",
                   help="geonames: gallery points near GeoNames places (default); mp16: real MP-16 photo coordinates "
                   "from the GeoCLIP wheel (fetched once with pip into the cache dir)")
    b.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the tile positions (default 0)")
    b.add_argument("--tile-size", type=positive_int, default=64, help="tile side in pixels (default 64)")
    b.add_argument("--window", type=positive_int, default=32, help="tile coverage in 0.05-degree source pixels (default 32 = 1.6 deg)")
    b.add_argument("--cell-size", type=positive_float, default=2.0, help="grid cell side in degrees (labels, held-out split)")
    b.add_argument("--holdout-fraction", type=float, default=0.2, help="share of populated cells held out (held-out-cells)")
    b.add_argument("--overwrite", action="store_true", help="write into a folder that already holds a world")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.terrain import build_world

    w = build_world(
        args.out, args.gallery, args.queries, split=args.split, seed=args.seed, tile_size=args.tile_size,
        window_px=args.window, progress=not args.no_progress, cell_size=args.cell_size,
        holdout_fraction=args.holdout_fraction, overwrite=args.overwrite,
        queries_from=args.queries_from, gallery_from=args.gallery_from,
    )
    c, s = w["counts"], w["seconds"]
    print(f"terrain world in {args.out}: {c['gallery']} gallery + {c['queries']} query tiles "
          f"({args.split}; queries from {args.queries_from}, gallery from {args.gallery_from}; {c['gallery_cells']} gallery cells, {c['query_cells']} query cells, "
          f"{c['gallery_countries']} gallery countries) in {s['total']:.1f} s (tiles {s['tiles']:.1f} s)")
    if "mp16" in c:
        m = c["mp16"]
        print(f"  MP-16: {m['usable']} of {m['pool']} points usable ({m['dropped_sea_or_no_raster']} in the sea or outside "
              f"raster coverage, {m['dropped_by_split']} excluded by the split); drew {m['drawn']}")
    print(f"  {args.out}/gallery.csv, {args.out}/queries.csv, {args.out}/world.json")
    return 0
