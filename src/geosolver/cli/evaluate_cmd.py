"""``geosolver evaluate`` (metrics of a query store against a gallery) and ``geosolver compare``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from geosolver.cli.args import add_overwrite_option, non_negative_float, non_negative_int, positive_float, positive_int


def _choice(choices):
    def parse(s: str) -> str:
        if s not in choices:
            raise argparse.ArgumentTypeError(f"{s!r} is not one of {', '.join(choices)}")
        return s

    return parse


def _csv(typ):
    """A comma-separated list of ``typ`` values (each checked by ``typ``; at least one; duplicates dropped)."""

    def parse(s: str):
        try:
            vals = [typ(x.strip()) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {s!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected one or more comma-separated values, got {s!r}")
        return list(dict.fromkeys(vals))

    return parse


EXCLUDE_SELF_HELP = (
    "leave-one-out: a query never retrieves a gallery row with its own id. Default: on when --queries and --gallery "
    "are the same store (same path, or the same set of ids), because otherwise every query finds itself and scores a "
    "perfect 5000; off for different stores (queries that are nonetheless in the gallery are counted, and warned about "
    "on stderr and in metrics.json/metrics.md)"
)


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.evaluate import DEFAULT_KS, FUSE
    from geosolver.index import KINDS
    from geosolver.locate import DEFAULT_RADIUS_KM, DEFAULT_TEMPERATURE, STRATEGIES

    p = sub.add_parser(
        "evaluate", help="locate every query of a store in a gallery and report Geoscore etc.",
        description="Locate every query of a store in a gallery and report Geoscore, errors and accuracies, beside a random "
        "and an oracle reference. Lists for --strategy, --k, --temperature and --radius-km are swept from one kNN search. "
        "When --queries and --gallery are the same store, leave-one-out is on by default (see --exclude-self).",
    )
    p.add_argument("--queries", required=True, help="query embedding store (true lat/lon)")
    p.add_argument("--gallery", required=True, help="gallery embedding store")
    p.add_argument("--strategy", type=_csv(str), default=list(STRATEGIES), help=f"comma-separated, of {','.join(STRATEGIES)} (default all)")
    p.add_argument("--k", type=_csv(positive_int), default=list(DEFAULT_KS), help=f"comma-separated neighbour counts (default {','.join(map(str, DEFAULT_KS))})")
    loo = p.add_mutually_exclusive_group()
    loo.add_argument("--exclude-self", dest="exclude_self", action="store_true", default=None, help=EXCLUDE_SELF_HELP)
    loo.add_argument("--no-exclude-self", dest="exclude_self", action="store_false",
                     help="let queries retrieve themselves even when queries and gallery are the same store (the old default; inflated scores, warned about)")
    p.add_argument("--temperature", type=_csv(positive_float), default=[DEFAULT_TEMPERATURE],
                   help=f"softmax temperature; comma-separated values are swept (default {DEFAULT_TEMPERATURE:g})")
    p.add_argument("--radius-km", type=_csv(positive_float), default=[DEFAULT_RADIUS_KM],
                   help=f"densest-cluster radius in km; comma-separated values are swept (default {DEFAULT_RADIUS_KM:g}). "
                   "Every (strategy, k, temperature, radius) combination is a row of metrics.md/metrics.json, the best marked")
    p.add_argument("--index", choices=KINDS, default=KINDS[0], help=f"gallery index kind (default {KINDS[0]})")
    p.add_argument("--nprobe", type=positive_int, default=None, help="IVF cells visited per query")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap repetitions for the 95%% interval")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the bootstrap resamples and the random baseline (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip errors_map.png and errors_hist.png")
    p.add_argument("--out", required=True, help="output directory")
    add_overwrite_option(p)
    from geosolver.prior import DEFAULT_PRIOR_WEIGHT, PRIOR_BY, PRIORS
    from geosolver.zeroshot import LEVELS

    z = p.add_argument_group("text prior and zero-shot (a CLIP gallery with a text tower, e.g. streetclip)")
    z.add_argument("--prior", type=_csv(_choice(PRIORS)), default=["none"],
                   help="comma-separated, of none,text: 'text' multiplies each neighbour's vote by the zero-shot probability of "
                        "its country; 'none,text' reports both (default none)")
    z.add_argument("--prior-by", choices=PRIOR_BY, default=None, help=f"what --prior text matches (default {PRIOR_BY[0]})")
    z.add_argument("--prior-weight", type=_csv(non_negative_float), default=None,
                   help=f"exponent λ on the prior's probabilities; comma-separated values are swept (default {DEFAULT_PRIOR_WEIGHT:g})")
    z.add_argument("--zero-shot", choices=LEVELS, default=None, metavar="LEVEL",
                   help=f"also score the text model alone, one of {', '.join(LEVELS)} (its own row, strategy zero-shot-LEVEL)")
    z.add_argument("--text-temperature", type=positive_float, default=None, help="zero-shot softmax temperature (default: the CLIP's logit scale)")
    z.add_argument("--prompt", default=None, metavar="TEMPLATE", help="prompt template with {country}, {region}, {city} (default: StreetCLIP's forms)")
    h = p.add_argument_group("location head (geosolver head train)")
    h.add_argument("--head", default=None, metavar="DIR", help="a head trained on this encoder's embeddings: adds the head's own "
                   "row and, per setting, the vote fused with it (and, for a cells head, refined inside its top cells)")
    h.add_argument("--fuse", type=_csv(_choice(FUSE)), default=None,
                   help="with --head, comma-separated of none,head: the plain vote and/or the vote fused with the head (default none,head)")
    h.add_argument("--head-weight", type=_csv(non_negative_float), default=None,
                   help="exponent λ on the head's probabilities; comma-separated values are swept (default 1)")
    h.add_argument("--refine-top", type=non_negative_int, default=None,
                   help="cells head: also vote with the neighbours inside its N most probable cells; 0 = no such rows (default 5)")
    p.set_defaults(func=run)

    c = sub.add_parser("compare", help="several evaluation runs in one table")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluate --out folders to compare")
    c.add_argument("--all", action="store_true", help="every (strategy, k) row, not only each run's best")
    c.add_argument("--out", default=None, help="also write the markdown table to this file (a new file, unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    c.set_defaults(func=run_compare)


def run(args: argparse.Namespace) -> int:
    from geosolver.evaluate import EvaluateWarning, evaluate, metrics_markdown
    from geosolver.prior import DEFAULT_PRIOR_WEIGHT, PRIOR_BY

    if "text" not in args.prior and args.zero_shot is None and (args.prompt is not None or args.text_temperature is not None):
        from geosolver.errors import UserError

        raise UserError("--prompt and --text-temperature need --prior text or --zero-shot LEVEL (they set the text model)")
    if "text" not in args.prior and (args.prior_by is not None or args.prior_weight is not None):
        from geosolver.errors import UserError

        raise UserError("--prior-by and --prior-weight set the text prior: add --prior text (or none,text)")
    from geosolver.rundir import check_out

    check_out(args.out, "evaluate")  # before the evaluation, not after it: the user's folder is refused at once

    if args.head is None and (args.fuse is not None or args.head_weight is not None or args.refine_top is not None):
        from geosolver.errors import UserError

        raise UserError("--fuse, --head-weight and --refine-top set how a location head is used: add --head DIR")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluateWarning)  # printed below, once, from the result
        res = evaluate(
            args.queries, args.gallery, strategies=args.strategy, ks=args.k,
            exclude_self="auto" if args.exclude_self is None else args.exclude_self,
            out=args.out, temperature=args.temperature, radius_km=args.radius_km, index_kind=args.index,
            bootstrap=args.bootstrap, seed=args.seed, plots=not args.no_plots, nprobe=args.nprobe,
            priors=args.prior, prior_by=args.prior_by or PRIOR_BY[0],
            prior_weight=DEFAULT_PRIOR_WEIGHT if args.prior_weight is None else args.prior_weight, zero_shot=args.zero_shot,
            text_temperature=args.text_temperature, prompt=args.prompt, head=args.head,
            fuse=args.fuse or ["none", "head"], head_weight=[1.0] if args.head_weight is None else args.head_weight,
            refine_top=5 if args.refine_top is None else args.refine_top,
        )
    note = res["self_overlap"].get("note")
    if note:
        print(f"geosolver evaluate: {note}", file=sys.stderr)
    for w in res["warnings"]:
        print(f"geosolver evaluate: WARNING: {w}", file=sys.stderr)
    print(metrics_markdown(res))
    print(f"\nwrote {args.out}/: metrics.json metrics.md predictions.parquet config.json" + ("" if args.no_plots else " errors_map.png errors_hist.png"))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from geosolver.errors import OutputDirError
    from geosolver.evaluate import compare_runs
    from geosolver.files import atomic_write_text

    if args.out and os.path.lexists(args.out) and not args.overwrite:
        raise OutputDirError(f"--out {args.out} already exists; pick a new file name, or pass --overwrite to replace it")
    _, md = compare_runs(args.runs, all_rows=args.all)
    print(md)
    if args.out:
        atomic_write_text(args.out, md + "\n")
    return 0
