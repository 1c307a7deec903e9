"""The settings of ``geosolver analyze`` (:class:`AnalyzeConfig`), numpy- and pandas-free: the
command's parser is derived from it without importing the analysis itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

#: Spearman's ρ is exact over all pairs up to this many; above, it uses a uniform sample of
#: :data:`SPEARMAN_SUBSAMPLE_PAIRS` pairs.
SPEARMAN_EXACT_MAX_PAIRS = 2_000_000
SPEARMAN_SUBSAMPLE_PAIRS = 1_000_000


def _opt(help: str, cli: bool = True, **kw) -> dict:
    """A config field's metadata: its command-line help (and argparse type / nargs / ...)."""
    return {"help": help, "cli": cli, **kw}


@dataclass
class AnalyzeConfig:
    """Every setting of ``geosolver analyze`` (the command's options are derived from these fields)."""

    stores: Sequence[str] = field(metadata=_opt("embedding store directories (one per encoder)", positional=True, nargs="+", metavar="STORE"))
    out: str = field(metadata=_opt(
        "output directory: report.html, report.md + PNGs, stats.json, config.json, curve_<name>.json (the fitted mu(d))", required=True))
    sample: int = field(default=5000, metadata=_opt("N images; all N(N-1)/2 pairs are analysed (default 5000)", type="positive_int"))
    pairs: int | None = field(default=None, metadata=_opt("instead: M random pairs drawn from all shared images", type="positive_int"))
    seed: int = field(default=0, metadata=_opt("random seed of the sample and pairs (default 0)", type="non_negative_int"))
    names: Sequence[str] | None = field(default=None, metadata=_opt("comma-separated display names, one per store", type="comma_list"))
    block: int = field(default=256, metadata=_opt("rows per block of the pair pass (default 256; memory ≈ 2 threads × block × N × 100 bytes)", type="positive_int"))
    spearman_exact_max_pairs: int = field(default=SPEARMAN_EXACT_MAX_PAIRS, metadata=_opt("Spearman is exact over all pairs up to this many", cli=False))
    spearman_subsample: int = field(default=SPEARMAN_SUBSAMPLE_PAIRS, metadata=_opt("above: Spearman on this many uniformly random pairs", cli=False))
    progress: bool = field(default=True, metadata=_opt("progress bars (shown only when stderr is a terminal)"))
    report: bool = field(default=True, metadata=_opt("write report.html / report.md / PNGs (stats.json and config.json always)", cli=False))
