"""A folder of images plus a CSV of coordinates.

The CSV names each image either by a path column (``path``, ``file``, ``filename``, ``file_name``,
``image``, ``image_path`` ...; relative to the root — or to the CSV's folder — or absolute) or by an
``id`` column (the image is then ``ROOT/<id>.<ext>`` or any ``<id>.<ext>`` found by walking the
root). Coordinate columns may be spelt ``lat``/``latitude``/``LAT``/... and
``lon``/``lng``/``long``/``longitude``/... (case-insensitive). Without an id column the id is the
file stem (or the path as written in the CSV when stems repeat). Other columns pass through.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from geosolver.data.common import (
    ID_NAMES,
    LAT_NAMES,
    LON_NAMES,
    PATH_NAMES,
    REASON_NOT_FOUND,
    DatasetError,
    find_column,
    finish_table,
    parse_coords,
    read_csv,
    require_column,
    skipped_frame,
    stem_index,
    walk_images,
)

log = logging.getLogger("geosolver.data.folder")

DEFAULT_CSV_NAMES = ("metadata.csv",)


def _find_csv(root: Path, split: str | None, csv: str | os.PathLike | None) -> Path:
    if csv is not None:
        p = Path(csv)
        if not p.is_absolute() and not p.exists() and (root / p).exists():
            p = root / p
        if p.is_dir():
            raise DatasetError(f"{p}: is a directory, not a CSV file")
        if not p.is_file():
            raise DatasetError(f"CSV file not found: {p}")
        return p
    names = ([f"{split}.csv"] if split else []) + list(DEFAULT_CSV_NAMES)
    for n in names:
        if (root / n).is_file():
            return root / n
    present = sorted(p.name for p in root.glob("*.csv"))
    raise DatasetError(
        f"{root}: no CSV given and none of {', '.join(names)} exists there"
        + (f" (CSV files present: {', '.join(present)})" if present else "")
        + "; name the labels file with --csv FILE (csv=FILE in the Python API)"
    )


def _resolve_paths(values: pd.Series, bases: list[Path]) -> tuple[pd.Series, np.ndarray]:
    """Absolute paths for the CSV's path column and whether each file exists (tried under each base)."""
    out = np.empty(len(values), dtype=object)
    found = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.to_numpy()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            out[i] = ""
            continue
        v = str(v).strip()
        p = Path(v).expanduser()
        cands = [p] if p.is_absolute() else [b / p for b in bases]
        for c in cands:
            if c.is_file():
                out[i], found[i] = str(c), True
                break
        else:
            out[i] = str(cands[0])
    return pd.Series(out, dtype="str"), found


def read_folder(
    root: str | os.PathLike,
    split: str | None = None,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Read a folder of images described by a CSV (see the module docstring).

    Args:
        root: the image folder; relative image paths are resolved against it.
        split: if given and ``csv`` is not, ``ROOT/<split>.csv`` is tried before ``ROOT/metadata.csv``.
        csv: the CSV file (default ``ROOT/metadata.csv``).
        limit: keep the first ``limit`` usable rows.

    Returns:
        The reader table; ``attrs["skipped"]`` lists rows with bad coordinates or a missing image.
    """
    root = Path(os.path.abspath(root))  # absolute sources: valid from any working directory
    if not root.is_dir():
        raise DatasetError(f"image folder is not a directory: {root}")
    csv_path = _find_csv(root, split, csv)
    df = read_csv(csv_path, ID_NAMES + PATH_NAMES + LAT_NAMES + LON_NAMES)
    where = str(csv_path)
    id_col = find_column(df.columns, ID_NAMES)
    path_col = find_column(df.columns, PATH_NAMES)
    lat_col = require_column(df.columns, LAT_NAMES, "latitude", where)
    lon_col = require_column(df.columns, LON_NAMES, "longitude", where)
    if id_col is None and path_col is None:
        raise DatasetError(
            f"{where}: no column naming the images (looked for an id column {list(ID_NAMES)} or a path "
            f"column {list(PATH_NAMES)}, case-insensitive); columns found: {list(df.columns)}"
        )

    walk_skipped: list[tuple[str, str]] = []
    if path_col is not None:
        bases = [root] + ([csv_path.parent] if csv_path.parent.resolve() != root.resolve() else [])
        sources, found = _resolve_paths(df[path_col], bases)
        if id_col is not None:
            ids = df[id_col].astype("str")
        else:
            written = df[path_col].astype("str").str.strip()
            ids = written.str.replace("\\", "/", regex=False).str.rsplit("/", n=1).str[-1].str.rsplit(".", n=1).str[0]
            # Different files with the same stem (a/1.jpg, b/1.jpg): the stem is no id, use the path.
            if pd.DataFrame({"stem": ids, "path": written}).drop_duplicates().duplicated("stem").any():
                log.info("%s: different files share a stem; using the paths as written in the CSV as ids", where)
                ids = written
    else:
        ids = df[id_col].astype("str").str.strip()
        # walk_images lists a folder's own files before its sub-folders', so ROOT/<id>.<ext> wins.
        index = stem_index(walk_images(root, skipped=walk_skipped))
        sources = pd.DataFrame({"id": ids}).merge(index, on="id", how="left", sort=False)["source"]
        found = sources.notna().to_numpy()
        sources = sources.fillna("")

    lat, lon, reasons = parse_coords(df[lat_col], df[lon_col])
    for i in np.flatnonzero(~found & pd.isna(reasons)):
        reasons[i] = REASON_NOT_FOUND
    meta = df.drop(columns=[c for c in (id_col, path_col, lat_col, lon_col) if c is not None])
    dataset = {"kind": "folder", "root": str(root), "split": split, "csv": str(csv_path)}
    return finish_table(ids, sources, lat, lon, meta, reasons, dataset, limit=limit,
                        extra_skipped=skipped_frame(walk_skipped, root))
