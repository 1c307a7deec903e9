"""``geosolver analyze``: similarity-vs-distance analysis and collapse diagnostics of embedding stores.

The options are derived from :class:`geosolver.analysis.AnalyzeConfig` (a setting is declared once)."""

from __future__ import annotations

import argparse
import sys

from geosolver.cli import summary
from geosolver.cli.args import add_config_arguments, add_overwrite_option, config_from_args


def register(sub) -> None:
    from geosolver.analysis import AnalyzeConfig  # numpy / pandas: not at `geosolver --help` start-up

    p = sub.add_parser(
        "analyze",
        help=summary("analyze"),
        description=(
            "Analyse one or more embedding stores of the same images (one per encoder): cosine similarity "
            "vs great-circle distance (density plot, binned mean, ideal monotone curve), Pearson/Spearman, "
            "false friends, similarity distribution, collapse diagnostics. Writes report.html, report.md, "
            "PNGs, stats.json, config.json and curve_<name>.json into --out."
        ),
    )
    add_config_arguments(p, AnalyzeConfig)
    add_overwrite_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.analysis import AnalyzeConfig, analyze
    from geosolver.analysis.report import table_rows

    cfg = config_from_args(AnalyzeConfig, args)
    cfg.progress = cfg.progress and sys.stderr.isatty()
    res = analyze(cfg).stats
    header, rows = table_rows(res)
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    for r in [header] + rows:
        print("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths))))
    print(f"\n{res['n_pairs']:,} pairs, {res['seconds']:.1f} s; Spearman: {res['spearman_method']}")
    print(f"report: {args.out}/report.html")
    return 0
