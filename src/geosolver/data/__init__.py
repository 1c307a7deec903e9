"""Dataset readers: turn a dataset on disk into one table of images and coordinates.

>>> table = read_dataset("osv5m", "/data/osv5m", split="test")          # doctest: +SKIP
>>> table.columns[:4].tolist()                                          # doctest: +SKIP
['id', 'source', 'lat', 'lon']

Every reader returns a :class:`pandas.DataFrame` with, in this order: ``id`` (str), ``source`` (str:
a file path, ``zip://ARCHIVE::MEMBER`` or ``tar://TARPATH::MEMBER`` — pass it to
:func:`geosolver.images.open_image`), ``lat``, ``lon`` (float64 degrees), then every metadata column
the source provides, unchanged. Rows keep the source's order. ``table.attrs["skipped"]`` is a
DataFrame (``id``, ``reason``) of the rows that could not be used; ``table.attrs["dataset"]``
describes kind/root/split/csv. Readers only locate images; they never decode pixels.

Kinds: ``osv5m`` (:mod:`.osv5m`), ``folder`` (images + CSV, :mod:`.folder`), ``exif`` (photos with
EXIF GPS, :mod:`.exif`), ``webdataset`` (local tar shards, :mod:`.webdataset`).
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import TYPE_CHECKING

from geosolver.data.names import DATASET_KINDS
from geosolver.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DATASET_KINDS", "DatasetError", "read_dataset", "add_dataset_arguments", "read_dataset_from_args"]


def read_dataset(
    kind: str,
    root: str | os.PathLike,
    split: str | None = None,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Read a dataset into the reader table (see the module docstring).

    Args:
        kind: one of :data:`DATASET_KINDS`.
        root: dataset root (OSV5M root, image folder, photo folder, or shard dir/file/glob).
        split: OSV5M ``"train"``/``"test"``; for the others an optional sub-folder / CSV name.
        csv: the CSV to read (``folder``; ``osv5m`` to read a subset CSV).
        limit: keep the first ``limit`` usable rows.

    Returns:
        DataFrame ``id, source, lat, lon, <metadata...>`` with ``attrs["skipped"]`` and ``attrs["dataset"]``.

    Raises:
        DatasetError: unknown kind, missing CSV or columns, or no usable row; the message names the file.
    """
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    # the reader module (pandas) loads on first use: the CLI's parsers import this package
    reader = getattr(importlib.import_module(f"{__name__}.{kind}"), f"read_{kind}")
    return reader(root, split=split, csv=csv, limit=limit)


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--dataset --root --split --csv --limit`` to a CLI parser (for commands that read datasets)."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", choices=DATASET_KINDS, default="folder", help="dataset layout (default: folder)")
    g.add_argument("--root", "--data", dest="root", required=required, help="dataset root: OSV5M root, image folder, or tar shard dir/glob")
    g.add_argument("--split", default=None, help="OSV5M split (train/test); sub-folder or CSV name for the others")
    g.add_argument("--csv", default=None, help="CSV file (folder: default ROOT/metadata.csv)")
    g.add_argument("--limit", type=int, default=None, help="keep only the first N usable rows")


def read_dataset_from_args(args: argparse.Namespace) -> pd.DataFrame:
    """:func:`read_dataset` with the arguments added by :func:`add_dataset_arguments`."""
    return read_dataset(args.dataset, args.root, split=args.split, csv=args.csv, limit=args.limit)
