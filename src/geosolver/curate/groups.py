"""Grouping images by feature columns and the group-size table (``geosolver curate stats``)."""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd

from geosolver.curate.names import DEFAULT_FEATURES  # re-exported
from geosolver.errors import CurationError

log = logging.getLogger(__name__)

MISSING = "<missing>"
#: Histogram bins of images per group: (label, low, high) inclusive.
SIZE_BINS: tuple[tuple[str, int, float], ...] = (
    ("1", 1, 1),
    ("2-3", 2, 3),
    ("4-10", 4, 10),
    ("11-20", 11, 20),
    ("21-50", 21, 50),
    ("51-100", 51, 100),
    ("101-150", 101, 150),
    (">150", 151, math.inf),
)


# ------------------------------------------------------------------------------------------
# grouping
# ------------------------------------------------------------------------------------------
#: Absent default columns already noticed in this process (see :func:`present_features`).
_NOTICED: set[tuple[str, ...]] = set()


def present_features(meta: pd.DataFrame, by: Sequence[str] | None = None, notice: bool = True) -> list[str]:
    """The columns of ``by`` that ``meta`` has, in order; the others are skipped with a notice.

    ``by=None`` means :data:`DEFAULT_FEATURES` (the user asked for nothing in particular): absent
    ones are noticed once per process (later calls log it at debug level), since a store without,
    say, ``soil`` lacks it on every call. Columns asked for explicitly are noticed every time.

    Raises:
        CurationError: if none is present, naming the columns that exist.
    """
    explicit = by is not None
    by = list(dict.fromkeys(DEFAULT_FEATURES if by is None else by))
    have = [c for c in by if c in meta.columns]
    missing = [c for c in by if c not in meta.columns]
    if missing and notice:
        key = tuple(missing)
        first = explicit or key not in _NOTICED
        _NOTICED.add(key)
        log.log(logging.WARNING if first else logging.DEBUG,
                "curate: feature column(s) %s absent from the metadata; grouping by %s%s", missing, have or "nothing",
                "" if explicit else " (add them with `geosolver enrich`, or pick columns with --by)")
    if not have:
        raise CurationError(
            f"none of the feature columns {by} is in the store metadata (columns: {list(meta.columns)}); "
            "add them with `geosolver enrich` or pick others with --by"
        )
    return have


def _feature_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and unique labels of one feature column; NaN/None becomes ``"<missing>"``."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True, sort=False)
    codes = codes.astype(np.int64)
    labels = np.asarray(uniques, dtype=object)
    if (codes < 0).any():
        codes[codes < 0] = len(labels)
        labels = np.append(labels, MISSING)
    return codes, labels


def group_codes(meta: pd.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group id of every row for the feature columns ``by`` (all must be present).

    Args:
        meta: metadata, one row per image.
        by: feature column names.

    Returns:
        ``(codes, keys)``: ``codes`` int64 ``(n,)`` in ``[0, G)``; ``keys`` a DataFrame with
        ``G`` rows (group id = row position) holding each group's feature values
        (``"<missing>"`` for NaN).
    """
    n = len(meta)
    combined = np.zeros(n, dtype=np.int64)
    per_col = []
    for c in by:
        codes, labels = _feature_codes(meta[c])
        per_col.append((codes, labels))
        combined = combined * len(labels) + codes
        # re-densify so the mixed-radix product cannot overflow with many columns
        combined, _ = pd.factorize(combined, sort=False)
        combined = combined.astype(np.int64)
    if not by:
        return combined, pd.DataFrame(index=range(1 if n else 0))
    # factorize numbers groups in order of first appearance, so a group's first row is where
    # the running maximum of the codes steps up (O(n), no sort)
    run_max = np.maximum.accumulate(combined) if n else combined
    first = np.flatnonzero(np.r_[True, run_max[1:] > run_max[:-1]]) if n else np.zeros(0, np.int64)
    keys = pd.DataFrame({c: labels[codes[first]] for c, (codes, labels) in zip(by, per_col)})
    return combined, keys


def group_table(meta: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per group of images sharing the values of ``by``, largest group first.

    ``by`` None: :data:`DEFAULT_FEATURES`. Absent columns are skipped with a notice (see
    :func:`present_features`); NaN values form the group value ``"<missing>"``.

    Returns:
        DataFrame with the present feature columns plus ``n_images`` (int), sorted by
        ``n_images`` descending (ties in order of first appearance in ``meta``).

    Raises:
        CurationError: if none of ``by`` is a column of ``meta``.
    """
    have = present_features(meta, by)
    codes, keys = group_codes(meta, have)
    sizes = np.bincount(codes, minlength=len(keys)).astype(np.int64)
    order = np.argsort(-sizes, kind="stable")  # largest first, ties in order of first appearance
    table = keys.iloc[order].astype(str).reset_index(drop=True)
    table["n_images"] = sizes[order]
    return table


def group_size_histogram(sizes: Sequence[int] | np.ndarray) -> pd.DataFrame:
    """Distribution of images per group in bins 1, 2-3, 4-10, 11-20, 21-50, 51-100, 101-150, >150.

    Args:
        sizes: images per group (positive ints), shape ``(G,)``.

    Returns:
        DataFrame with columns ``bin`` (label), ``n_groups``, ``n_images``, ``pct_groups``,
        ``pct_images`` (percent of all groups / images), one row per bin in the order above.
    """
    s = np.asarray(sizes, dtype=np.int64)
    rows = []
    for label, lo, hi in SIZE_BINS:
        m = (s >= lo) & (s <= hi)
        rows.append((label, int(m.sum()), int(s[m].sum())))
    df = pd.DataFrame(rows, columns=["bin", "n_groups", "n_images"])
    df["pct_groups"] = 100.0 * df["n_groups"] / max(len(s), 1)
    df["pct_images"] = 100.0 * df["n_images"] / max(int(s.sum()), 1)
    return df


def format_histogram(hist: pd.DataFrame) -> str:
    """Human-readable table of :func:`group_size_histogram` output."""
    lines = [f"{'images/group':>12} {'groups':>10} {'%groups':>8} {'images':>12} {'%images':>8}"]
    for r in hist.itertuples(index=False):
        lines.append(f"{r.bin:>12} {r.n_groups:>10,} {r.pct_groups:>7.1f}% {r.n_images:>12,} {r.pct_images:>7.1f}%")
    lines.append(f"{'total':>12} {int(hist['n_groups'].sum()):>10,} {'':>8} {int(hist['n_images'].sum()):>12,}")
    return "\n".join(lines)
