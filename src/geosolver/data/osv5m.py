"""OpenStreetView-5M (Hugging Face ``osv5m/osv5m``) in its published layout.

::

    ROOT/train.csv, ROOT/test.csv          id, latitude, longitude, thumb_original_url, country, ...
    ROOT/images/<split>/00.zip, 01.zip ... members <id>.jpg or <sub>/<id>.jpg (read in place)
    ROOT/images/<split>/<any>/<id>.jpg     shards already extracted (found by walking)

Zip shards and extracted folders may be mixed; when an id is in both, the extracted file wins
(reading a plain file is cheaper). The CSV may also live at ``ROOT/<split>/<split>.csv`` (the layout
of the OSV5M training code).
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from geosolver.data.common import (
    IMAGE_EXTENSIONS,
    REASON_NOT_FOUND,
    DatasetError,
    finish_table,
    limit_prefix,
    parse_coords,
    read_csv,
    require_column,
    stem_index,
    walk_images,
)
from geosolver.images import zip_source
from geosolver.progress import tqdm

log = logging.getLogger("geosolver.data.osv5m")

SPLITS = ("train", "test")
#: Columns read as strings whatever they look like: ids (never floats), and place names/codes
#: ("NA" is Namibia, not a missing value) — a small file could otherwise infer them as numbers/nulls.
STRING_COLUMNS = (
    "id", "latitude", "longitude", "thumb_original_url", "country", "sequence", "cell", "region",
    "sub-region", "city", "unique_region", "unique_sub-region", "unique_city", "unique_country",
    "creator_username", "creator_id",
)


#: The id and coordinate columns under every spelling the reader accepts (always read).
_CORE_NAMES = ("id", "latitude", "lat", "longitude", "lon")


def read_osv5m_csv(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """An OSV5M CSV as a frame: ``id``, ``latitude``, ``longitude`` (as strings, parsed later) and the
    metadata ``columns`` (``None``: every column). Columns not asked for are never parsed: reading
    only the few a job keeps is what makes the 4.9 M-row ``train.csv`` fit in ~1 GB
    (``benchmarks/osv5m_csv.py``).

    Raises:
        DatasetError: see :func:`geosolver.data.common.read_csv`.
    """
    keep = None if columns is None else (*_CORE_NAMES, *columns)
    return read_csv(path, STRING_COLUMNS, columns=keep)


def split_csv(root: Path, split: str) -> Path:
    """The CSV of ``split``: ``ROOT/<split>.csv`` or ``ROOT/<split>/<split>.csv``.

    Raises:
        DatasetError: neither is there (the message names both places).
    """
    candidates = [root / f"{split}.csv", root / split / f"{split}.csv"]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetError(f"OSV5M split {split!r}: no CSV at {' or '.join(map(str, candidates))}")


def _find_csv(root: Path, split: str | None, csv: str | os.PathLike | None) -> tuple[Path, str | None]:
    if csv is not None:
        return Path(csv), split
    if split is not None:
        return split_csv(root, split), split
    found = [(root / f"{s}.csv", s) for s in SPLITS if (root / f"{s}.csv").is_file()]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"{root}: not an OSV5M root: neither train.csv nor test.csv found")
    raise DatasetError(f"{root}: has both train.csv and test.csv; pass split='train' or split='test'")


def zip_member_names(path: str | os.PathLike) -> list[str]:
    """Names of the members of a zip file, read straight from its central directory.

    About 10x faster than :class:`zipfile.ZipFile` for archives with ~10^5 members (OSV5M has
    ~50 000 per shard), because no ``ZipInfo`` objects are built. Handles zip64; falls back to
    :mod:`zipfile` on anything it does not recognise.

    Raises:
        OSError, zipfile.BadZipFile: unreadable or not a zip file.
    """
    try:
        return fast_zip_names(path)
    except (ValueError, struct.error):
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()


def fast_zip_names(path: str | os.PathLike) -> list[str]:
    """The central-directory parser of :func:`zip_member_names`, without its :mod:`zipfile` fallback.

    Raises:
        ValueError, struct.error: a layout it does not recognise; OSError: unreadable file.
    """
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_len = min(size, 65536 + 22)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        e = tail.rfind(b"PK\x05\x06")
        if e < 0:
            raise ValueError("no end of central directory record")
        eocd_pos = size - tail_len + e
        n_entries, cd_size, cd_offset = struct.unpack_from("<HII", tail, e + 10)
        cd_start = eocd_pos - cd_size
        loc = e - 20  # a zip64 end-of-central-directory locator sits right before the end record
        has_zip64 = loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07"
        if not has_zip64 and (n_entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF):
            raise ValueError("zip64 locator not found")
        if has_zip64:
            (z64_pos,) = struct.unpack_from("<Q", tail, loc + 8)
            f.seek(z64_pos)
            rec = f.read(56)
            if rec[:4] != b"PK\x06\x06":
                raise ValueError("zip64 end record not found")
            n_entries, cd_size, cd_offset = struct.unpack_from("<QQQ", rec, 32)
            cd_start = z64_pos - cd_size
        f.seek(cd_start)
        cd = f.read(cd_size)
    raws: list[bytes] = []
    utf8: list[bool] = []
    pos, end = 0, len(cd)
    unpack = struct.Struct("<HHH").unpack_from
    flag_of = struct.Struct("<H").unpack_from
    while pos < end:
        if cd[pos : pos + 4] != b"PK\x01\x02":
            raise ValueError(f"bad central directory entry at {pos}")
        n, m, k = unpack(cd, pos + 28)
        raws.append(cd[pos + 46 : pos + 46 + n])
        utf8.append(bool(flag_of(cd, pos + 8)[0] & 0x800))
        pos += 46 + n + m + k
    joined = b"\n".join(raws)
    if joined.isascii() and joined.count(b"\n") == len(raws) - 1:  # the common case, decoded at once
        names = joined.decode("ascii").split("\n") if raws else []
    else:
        names = [r.decode("utf-8" if u else "cp437") for r, u in zip(raws, utf8)]
    if len(names) != n_entries:
        raise ValueError(f"central directory lists {len(names)} entries, end record says {n_entries}")
    return names


def index_images(image_dir: Path) -> pd.DataFrame:
    """Locate every image under ``image_dir``: members of ``*.zip`` shards (read from the central
    directory, nothing extracted) and files in extracted folders.

    Returns:
        DataFrame ``id`` (file stem) → ``source`` (path or ``zip://ARCHIVE::MEMBER``), one row per id;
        extracted files come before zip members, so they win on a repeated id.
    """
    zips = sorted(p for p in image_dir.glob("*.zip") if p.is_file()) if image_dir.is_dir() else []
    files = walk_images(image_dir) if image_dir.is_dir() else []
    parts = [stem_index(files)] if files else []
    exts = tuple(IMAGE_EXTENSIONS)
    for z in tqdm(zips, desc=f"indexing {image_dir.name} zips", unit="zip", disable=len(zips) < 2):
        try:
            names = [n for n in zip_member_names(z) if n.lower().endswith(exts)]
        except (OSError, zipfile.BadZipFile) as e:
            log.warning("skipping unreadable zip shard %s: %s", z, e)
            continue
        members = pd.Series(names, dtype="str")
        parts.append(stem_index(members, zip_source(z, "") + members))
    if not parts:
        return pd.DataFrame({"id": pd.Series([], dtype="str"), "source": pd.Series([], dtype="str")})
    idx = pd.concat(parts, ignore_index=True)
    return idx.drop_duplicates("id", keep="first").reset_index(drop=True)


def read_osv5m(
    root: str | os.PathLike,
    split: str | None = None,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read an OSV5M split (see the module docstring for the layout).

    Args:
        root: the dataset root (holding ``train.csv`` / ``test.csv`` and ``images/``).
        split: ``"train"`` or ``"test"``; may be omitted when only one CSV exists or ``csv`` is given.
        csv: use this CSV (e.g. a subset with the same header) instead of ``ROOT/<split>.csv``.
        limit: keep the first ``limit`` usable rows.
        columns: the metadata columns to keep (names the CSV lacks are ignored); ``None``: all of them.

    Returns:
        The reader table (``id``, ``source``, ``lat``, ``lon``, then the other CSV columns kept, in CSV
        order); ``attrs["skipped"]`` lists rows with bad coordinates or no image.
    """
    root = Path(os.path.abspath(root))  # absolute sources: valid from any working directory
    if not root.is_dir():
        raise DatasetError(f"OSV5M root is not a directory: {root}")
    csv_path, split = _find_csv(root, split, csv)
    df = read_osv5m_csv(csv_path, columns)
    where = str(csv_path)
    id_col = require_column(df.columns, ("id",), "id", where)
    lat_col = require_column(df.columns, ("latitude", "lat"), "latitude", where)
    lon_col = require_column(df.columns, ("longitude", "lon"), "longitude", where)

    image_dir = root / "images" / split if split else root / "images"
    if not image_dir.is_dir():
        raise DatasetError(f"{root}: no image directory {image_dir} (expected zip shards or extracted images)")
    ids = df[id_col].astype("str").str.strip()
    ids = ids.str.replace(r"\.0$", "", regex=True)  # ids written as floats by some tools
    lat, lon, reasons = parse_coords(df[lat_col], df[lon_col])
    sources = _match_images(ids, np.array(pd.isna(reasons), dtype=bool), index_images(image_dir), limit)
    m = len(sources)  # the rows that decide the table (all of them without a limit)
    reasons = reasons[:m]
    reasons[sources.isna().to_numpy() & np.array(pd.isna(reasons), dtype=bool)] = REASON_NOT_FOUND
    meta = df.drop(columns=[id_col, lat_col, lon_col]).iloc[:m]
    dataset = {"kind": "osv5m", "root": str(root), "split": split, "csv": str(csv_path), "images": str(image_dir)}
    return finish_table(ids.iloc[:m], sources.fillna(""), lat[:m], lon[:m], meta, reasons, dataset, limit=limit)


def _match_images(ids: pd.Series, coords_ok: np.ndarray, index: pd.DataFrame, limit: int | None) -> pd.Series:
    """Each id's image source (NaN: none) for the leading rows that decide the table: every row without a
    limit; with one, a prefix doubled until it holds the (limit+1)-th usable row (nothing after it can
    change the table). Matched with Arrow's hash lookup: pandas' merge turned 4.9 M string keys into
    Python objects (~1 GB more at full size; ``benchmarks/osv5m_csv.py``)."""
    import pyarrow as pa  # pyarrow: heavy, loaded only when a table is read
    import pyarrow.compute as pc  # pyarrow: heavy, loaded only when a table is read

    keys = pa.array(index["id"]).cast(pa.large_string())
    values = pa.array(index["source"]).cast(pa.large_string())
    n = len(ids)
    m = n if limit is None or limit < 0 else min(n, 2 * limit + 1024)
    while True:
        where = pc.index_in(pa.array(ids.iloc[:m]).cast(pa.large_string()), value_set=keys)
        found = pc.take(values, where).to_pandas()
        if m == n or limit_prefix(ids.iloc[:m], coords_ok[:m] & found.notna().to_numpy(), limit) < m:
            return found
        m = min(n, 2 * m)
