"""``geosolver evaluate`` (metrics of a query store against a gallery, its options derived from
:class:`geosolver.evaluate.EvaluateConfig`) and ``geosolver compare``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from geosolver.cli.args import add_config_arguments, add_overwrite_option, config_from_args

EXCLUDE_SELF_HELP = (
    "leave-one-out: a query never retrieves a gallery row with its own id. Default: on when --queries and --gallery "
    "are the same store (same path, or the same set of ids), because otherwise every query finds itself and scores a "
    "perfect 5000; off for different stores (queries that are nonetheless in the gallery are counted, and warned about "
    "on stderr and in metrics.json/metrics.md)"
)


def register(sub: argparse._SubParsersAction) -> None:
    from geosolver.evaluate import EvaluateConfig

    p = sub.add_parser(
        "evaluate", help="locate every query of a store in a gallery and report Geoscore etc.",
        description="Locate every query of a store in a gallery and report Geoscore, errors and accuracies, beside a random "
        "and an oracle reference. Lists for --strategy, --k, --temperature and --radius-km are swept from one kNN search. "
        "When --queries and --gallery are the same store, leave-one-out is on by default (see --exclude-self).",
    )
    add_config_arguments(p, EvaluateConfig)
    # three states (on / off / "auto", the CLI's default), which a boolean field cannot spell
    loo = p.add_mutually_exclusive_group()
    loo.add_argument("--exclude-self", dest="exclude_self", action="store_const", const=True, default="auto", help=EXCLUDE_SELF_HELP)
    loo.add_argument("--no-exclude-self", dest="exclude_self", action="store_const", const=False,
                     help="let queries retrieve themselves even when queries and gallery are the same store (the old default; inflated scores, warned about)")
    add_overwrite_option(p)
    p.set_defaults(func=run)

    c = sub.add_parser("compare", help="several evaluation runs in one table")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluate --out folders to compare")
    c.add_argument("--all", action="store_true", help="every (strategy, k) row, not only each run's best")
    c.add_argument("--out", default=None, help="also write the markdown table to this file (a new file, unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    c.set_defaults(func=run_compare)


def _given(args: argparse.Namespace, *names: str) -> bool:
    """Whether any of the options ``names`` (fields) is on the command line or set to a value."""
    return any(getattr(args, n, None) is not None for n in names)


def run(args: argparse.Namespace) -> int:
    from geosolver.errors import UserError
    from geosolver.evaluate import EvaluateConfig, EvaluateWarning, metrics_markdown, run_evaluate
    from geosolver.rundir import check_out

    cfg = config_from_args(EvaluateConfig, args)
    if "text" not in cfg.priors and cfg.zero_shot is None and _given(args, "prompt", "text_temperature"):
        raise UserError("--prompt and --text-temperature need --prior text or --zero-shot LEVEL (they set the text model)")
    if "text" not in cfg.priors and _given(args, "prior_by", "prior_weight"):
        raise UserError("--prior-by and --prior-weight set the text prior: add --prior text (or none,text)")
    check_out(cfg.out, "evaluate")  # before the evaluation, not after it: the user's folder is refused at once
    if cfg.head is None and _given(args, "fuse", "head_weight", "refine_top"):
        raise UserError("--fuse, --head-weight and --refine-top set how a location head is used: add --head DIR")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluateWarning)  # printed below, once, from the result
        res = run_evaluate(cfg).as_dict()
    note = res["self_overlap"].get("note")
    if note:
        print(f"geosolver evaluate: {note}", file=sys.stderr)
    for w in res["warnings"]:
        print(f"geosolver evaluate: WARNING: {w}", file=sys.stderr)
    print(metrics_markdown(res))
    print(f"\nwrote {cfg.out}/: metrics.json metrics.md predictions.parquet config.json" + ("" if not cfg.plots else " errors_map.png errors_hist.png"))
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
