"""The dataset kinds, pandas-free: what the CLI's parsers need (``--dataset`` choices) without
loading a reader (each imports pandas)."""

from __future__ import annotations

#: The dataset kinds :func:`geosolver.data.read_dataset` accepts; kind ``k`` is read by
#: ``geosolver.data.<k>.read_<k>``.
DATASET_KINDS: tuple[str, ...] = ("osv5m", "folder", "exif", "webdataset")
