"""Shared pieces of the dataset readers: the error type, column-name matching, CSV reading,
coordinate checks and the final assembly of the table every reader returns.

Every reader returns a :class:`pandas.DataFrame` with the columns ``id`` (str), ``source`` (str: a
file path, ``zip://ARCHIVE::MEMBER`` or ``tar://TARPATH::MEMBER``), ``lat``, ``lon`` (float64,
degrees), then the metadata columns the source provides, unchanged. Rows that cannot be used are
listed in ``table.attrs["skipped"]`` (columns ``id``, ``reason``); ``table.attrs["dataset"]`` describes
where the table came from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from geosolver.errors import DatasetError

log = logging.getLogger("geosolver.data")

#: Image file extensions the readers look for (lower case, with the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")

#: Accepted spellings of the coordinate columns / JSON keys (matched case-insensitively, in order).
LAT_NAMES: tuple[str, ...] = ("lat", "latitude", "gps_lat", "gps_latitude", "lat_deg")
LON_NAMES: tuple[str, ...] = ("lon", "lng", "long", "longitude", "gps_lon", "gps_lng", "gps_longitude", "lon_deg")
#: Columns naming an image file (relative to the dataset root, or absolute).
PATH_NAMES: tuple[str, ...] = ("path", "file", "filename", "file_name", "filepath", "image", "image_path", "img_path")
#: Columns holding an image id.
ID_NAMES: tuple[str, ...] = ("id", "image_id", "img_id", "photo_id")

REASON_NOT_FOUND = "image not found"


def find_column(columns: Sequence[str], names: Iterable[str]) -> str | None:
    """The first of ``columns`` equal (case-insensitively, ignoring surrounding blanks) to one of
    ``names``, trying ``names`` in order; ``None`` if none matches."""
    by_lower: dict[str, str] = {}
    for c in columns:
        by_lower.setdefault(str(c).strip().lower(), c)
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


def require_column(columns: Sequence[str], names: Sequence[str], what: str, where: str) -> str:
    """Like :func:`find_column` but raise :class:`DatasetError` naming ``where`` and the columns found."""
    col = find_column(columns, names)
    if col is None:
        raise DatasetError(
            f"{where}: no {what} column (looked for any of {', '.join(names)}, case-insensitive); "
            f"columns found: {list(columns)}"
        )
    return col


def read_csv(path: str | os.PathLike, string_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV file with pyarrow (multi-threaded, arrow-backed strings: lean for millions of rows).

    Only empty fields are missing values: strings such as ``"NA"`` (Namibia's country code) are kept
    as they are. ``string_columns`` (matched case-insensitively) are read as strings without type inference —
    used for ids and for coordinates, which are parsed leniently later.

    Raises:
        DatasetError: the file is missing, empty or not parseable CSV.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    try:
        # The column names first, so string_columns may name columns that exist only in some files.
        with pcsv.open_csv(path) as reader:
            names = reader.schema.names
        wanted = {c.strip().lower() for c in string_columns}
        types = {c: pa.string() for c in names if c.strip().lower() in wanted}
        table = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: cannot read as CSV: {e}") from None
    return table.to_pandas()


def parse_coords(lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse latitude/longitude values leniently and say which rows are unusable.

    Args:
        lat, lon: array-likes of numbers or strings (degrees); unparseable values count as missing.

    Returns:
        ``(lat, lon, reasons)``: float64 arrays of shape (N,), and an object array of shape (N,)
        holding ``None`` for usable rows and a human-readable reason for the others (missing, not
        finite or out of range: lat must be in [-90, 90], lon in [-180, 180]).
    """
    lat_a = pd.to_numeric(pd.Series(lat), errors="coerce").to_numpy(np.float64, copy=True)
    lon_a = pd.to_numeric(pd.Series(lon), errors="coerce").to_numpy(np.float64, copy=True)
    reasons = np.full(lat_a.shape, None, dtype=object)
    with np.errstate(invalid="ignore"):
        bad_lon = ~np.isfinite(lon_a) | (np.abs(lon_a) > 180.0)
        bad_lat = ~np.isfinite(lat_a) | (np.abs(lat_a) > 90.0)
    for i in np.flatnonzero(bad_lat | bad_lon):
        parts = []
        for name, bad, raw, parsed in (("latitude", bad_lat, lat, lat_a), ("longitude", bad_lon, lon, lon_a)):
            if bad[i]:
                if np.isfinite(parsed[i]):
                    parts.append(f"{name} {float(parsed[i])!r} out of range")
                else:
                    parts.append(f"{name} {_fmt(raw, i)} missing or not a number")
        reasons[i] = "invalid coordinates: " + "; ".join(parts)
    return lat_a, lon_a, reasons


def _fmt(values, i: int) -> str:
    v = values.iloc[i] if isinstance(values, pd.Series) else values[i]
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return "(empty)"
    return repr(v.item() if isinstance(v, np.generic) else v)


def finish_table(
    ids,
    sources,
    lat,
    lon,
    metadata: pd.DataFrame | None,
    reasons,
    dataset: dict,
    limit: int | None = None,
    extra_skipped: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Assemble the reader output from per-row arrays (all of length N, in source order).

    Rows with a non-``None`` reason, and repeated ids after their first usable occurrence, go to
    ``attrs["skipped"]``; ``limit`` keeps the first ``limit`` usable rows (and only the skipped rows
    that came before the cut).

    Args:
        ids: (N,) ids, converted to str.
        sources: (N,) image sources (str; ignored where the row is skipped).
        lat, lon: (N,) float64 degrees.
        metadata: N rows of pass-through columns (index ignored), or ``None``.
        reasons: (N,) ``None`` for usable rows, else why the row is skipped.
        dataset: description stored as ``attrs["dataset"]``.
        limit: keep at most this many usable rows.
        extra_skipped: more skipped entries (``id``, ``reason``) not tied to a row, listed first.

    Raises:
        DatasetError: when no usable row remains.
    """
    ids = pd.Series(ids, dtype="str").reset_index(drop=True)
    reasons = np.asarray(reasons, dtype=object).copy()
    usable = np.array(pd.isna(reasons), dtype=bool)
    # A repeated id is skipped when an earlier *usable* row already has it.
    u_idx = np.flatnonzero(usable)
    dup = ids.iloc[u_idx].duplicated(keep="first").to_numpy()
    if dup.any():
        reasons[u_idx[dup]] = "duplicate id"
        usable[u_idx[dup]] = False

    n = len(ids)
    cut = n
    if limit is not None:
        if limit < 0:
            raise DatasetError(f"limit must be >= 0, got {limit}")
        pos = np.flatnonzero(usable)
        if len(pos) > limit:
            cut = int(pos[limit]) if limit > 0 else 0
    keep = usable.copy()
    keep[cut:] = False

    meta = metadata.reset_index(drop=True) if metadata is not None else pd.DataFrame(index=range(n))
    clash = [c for c in ("id", "source", "lat", "lon") if c in meta.columns]
    if clash:  # never let metadata shadow the core columns
        meta = meta.rename(columns={c: f"{c}_orig" for c in clash})
    table = pd.DataFrame(
        {
            "id": ids[keep].to_numpy(),
            "source": pd.Series(sources, dtype="str").reset_index(drop=True)[keep].to_numpy(),
            "lat": np.asarray(lat, dtype=np.float64)[keep],
            "lon": np.asarray(lon, dtype=np.float64)[keep],
        }
    )
    table["id"] = table["id"].astype("str")
    table["source"] = table["source"].astype("str")
    if len(meta.columns):
        table = pd.concat([table, meta[keep].reset_index(drop=True)], axis=1)

    bad = ~usable
    bad[cut:] = False
    skipped = pd.DataFrame({"id": ids[bad].to_numpy(), "reason": reasons[bad]}).astype({"id": "str", "reason": "str"})
    if extra_skipped is not None and len(extra_skipped):
        skipped = pd.concat([extra_skipped[["id", "reason"]].astype("str"), skipped], ignore_index=True)
    if len(table) == 0:
        counts = skipped["reason"].str.split(":").str[0].value_counts().head(5).to_dict() if len(skipped) else {}
        raise DatasetError(f"{_where(dataset)}: no usable rows (skipped {len(skipped)}: {counts or 'dataset is empty'})")
    if len(skipped):
        by_reason = skipped["reason"].str.split(":").str[0].value_counts().to_dict()
        log.warning("%s: skipped %d row(s): %s", _where(dataset), len(skipped), by_reason)
    table.attrs["skipped"] = skipped
    table.attrs["dataset"] = dict(dataset, rows=len(table), skipped=len(skipped), limit=limit)
    return table


def _where(dataset: dict) -> str:
    return str(dataset.get("csv") or dataset.get("root"))


def walk_images(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Paths (as str, deterministic) of all image files under ``root``, recursively.

    Order: depth-first, names sorted; a folder's own files come before those of its sub-folders.

    Hidden files and directories (starting with ``.``) are ignored.
    """
    exts = tuple(e.lower() for e in extensions)
    out: list[str] = []
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            log.warning("cannot list %s: %s", d, e)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=True):
                subdirs.append(e.path)
            elif e.name.lower().endswith(exts):
                out.append(e.path)
        stack.extend(reversed(subdirs))
    return out


def stem_index(paths: Sequence[str] | pd.Series, sources: Sequence[str] | pd.Series | None = None) -> pd.DataFrame:
    """A table ``id`` (file stem: name without folders and last extension) → ``source`` (default:
    the path itself); for a repeated stem the first occurrence wins. Vectorised (arrow strings)."""
    p = pd.Series(paths, dtype="str").reset_index(drop=True)
    stem = p.str.replace(r"^.*[/\\]", "", regex=True).str.replace(r"\.[^.]*$", "", regex=True)
    src = p if sources is None else pd.Series(sources, dtype="str").reset_index(drop=True)
    idx = pd.DataFrame({"id": stem, "source": src})
    return idx.drop_duplicates("id", keep="first").reset_index(drop=True)
