"""The settings of an index build, numpy- and pandas-free: ``geosolver index build``'s options are
derived from :class:`BuildConfig` (see :func:`geosolver.cli.args.add_config_arguments`), and the
CLI's parsers read :data:`KINDS`, without loading the store or faiss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("flat", "ivf", "ivfpq")


def _opt(help: str, cli: bool = True, **kw: Any) -> Any:
    """A config field's metadata: its command-line help (and argparse type / choices)."""
    return {"help": help, "cli": cli, **kw}


@dataclass
class BuildConfig:
    """Every setting of ``geosolver index build`` (the command's options are derived from these fields)."""

    store: str = field(metadata=_opt("embedding store directory (the gallery)", positional=True))
    kind: str = field(default="flat", metadata=_opt("flat = exact (default); ivf / ivfpq = approximate, for millions of rows", choices=KINDS))
    nlist: int | None = field(default=None, metadata=_opt("IVF cells (default ~4*sqrt(rows))", type="positive_int"))
    pq_m: int | None = field(default=None, metadata=_opt("PQ bytes per vector for ivfpq (must divide dim; default 64 or the largest divisor)", type="positive_int"))
    pq_bits: int = field(default=8, metadata=_opt("bits per PQ sub-quantiser code", type="positive_int"))
    nprobe: int | None = field(default=None, metadata=_opt("cells visited per query (default: the smallest reaching --target-recall on held-out store rows)", type="positive_int"))
    rerank: int | None = field(default=None, metadata=_opt(
        "ivfpq: re-score rerank*k PQ candidates with the exact vectors (0 = off; default: the smallest of 10, 20, 40 reaching --target-recall)",
        type="non_negative_int"))
    target_recall: float = field(default=0.99, metadata=_opt("recall@10 the tuned nprobe / rerank must reach (default 0.99)", type="fraction"))
    recall_queries: int | None = field(default=None, metadata=_opt(
        "held-out store rows per recall sample (tuning + report; default 1000 for ivf/ivfpq, 0 for flat; 0 = no measurement)", type="non_negative_int"))
    train_size: int | None = field(default=None, metadata=_opt("rows sampled to train IVF/PQ", type="positive_int"))
    batch_size: int = field(default=65536, metadata=_opt("rows added per batch (the float32 RAM high-water mark besides the index)", type="positive_int"))
    threads: int | None = field(default=None, metadata=_opt("faiss OpenMP threads", type="positive_int"))
    memory_budget_gb: float | None = field(default=None, metadata=_opt(
        "ivfpq: choose nlist (~4*sqrt(n), power of 2), pq_m (largest divisor of dim <= 64) and where re-ranking reads vectors to fit this RAM budget",
        type="positive_float"))
    seed: int = field(default=0, metadata=_opt("seed of the training sample, k-means and recall samples", type="non_negative_int"))
    gpu: bool | None = field(default=None, metadata=_opt("search on GPU (default when faiss sees one)", cli=False))
    progress: bool = field(default=True, metadata=_opt("progress bar while adding", cli=False))
