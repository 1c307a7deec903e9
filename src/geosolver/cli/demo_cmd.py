"""`geosolver demo`: the built-in default job — the whole pipeline on the offline terrain world."""

from __future__ import annotations

from geosolver.cli import summary
from geosolver.cli.args import add_overwrite_option, non_negative_int, positive_int


def register(sub) -> None:
    from geosolver.names import DEMO_MODELS as DEFAULT_MODELS
    from geosolver.terrain import SPLITS

    p = sub.add_parser(
        "demo",
        help=summary("demo"),
        description="Build a terrain world from real offline geography, embed it, evaluate every strategy, "
        "curate galleries, analyse the embedding spaces and write report.html. A few minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="demo", help="output directory (default: demo)")
    p.add_argument("--gallery", type=positive_int, default=4000, help="gallery tiles (default 4000)")
    p.add_argument("--queries", type=positive_int, default=400, help="query tiles (default 400)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated encoders to compare (default {','.join(DEFAULT_MODELS)}; both run offline)")
    p.add_argument("--split", choices=SPLITS, default="random",
                   help="random: queries drawn like the gallery (default); held-out-cells: queries only from grid cells "
                        "absent from the gallery")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the world and the analysis (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    add_overwrite_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from geosolver.demo import run_demo

    run_demo(args.out, n_gallery=args.gallery, n_queries=args.queries, models=[m for m in args.models.split(",") if m],
             split=args.split, seed=args.seed, progress=not args.no_progress)
    return 0
