"""Shared pieces of the dataset readers: the error type, column-name matching, CSV reading,
coordinate checks and the final assembly of the table every reader returns.

Every reader returns a :class:`pandas.DataFrame` with the columns ``id`` (str), ``source`` (str: a
file path, ``zip://ARCHIVE::MEMBER`` or ``tar://TARPATH::MEMBER``), ``lat``, ``lon`` (float64,
degrees), then the metadata columns the source provides, unchanged. Rows that cannot be used are
listed in ``table.attrs["skipped"]`` (columns ``id``, ``reason``); ``table.attrs["dataset"]`` describes
where the table came from.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from geosolver.errors import DatasetError
import re

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


#: Encodings tried, in order, for a CSV that is not valid UTF-8. cp1252 (Windows "ANSI") decodes the
#: printable latin-1 characters the same way and also has € and typographic quotes; latin-1 decodes any
#: byte, so it is the last resort.
FALLBACK_ENCODINGS: tuple[str, ...] = ("cp1252", "latin-1")
_SNIFF_BYTES = 64 * 1024
#: Bytes that never occur in a text CSV (C0 controls other than tab, newlines and form feed; DEL).
_CONTROL_BYTES = bytes([*range(0, 9), 11, *range(14, 32), 127])


def one_line(text, limit: int = 300) -> str:
    """``text`` as one printable line of at most ``limit`` characters (for error messages quoting data)."""
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else "?" for c in s)
    return s if len(s) <= limit else s[:limit] + " ..."


def _sniff_encoding(path: Path) -> str:
    """``"utf-16"`` for a file with a UTF-16 byte-order mark, else ``"utf-8"``; raise
    :class:`DatasetError` for an empty file or one whose first bytes are binary, not text."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the CSV file: {one_line(e.strerror or e)}") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if not head.strip():
        raise DatasetError(f"{path}: the CSV file is empty")
    n_control = sum(head.count(bytes([b])) for b in _CONTROL_BYTES)
    if b"\x00" in head or n_control > 0.01 * len(head):
        raise DatasetError(
            f"{path}: not a CSV file: binary content ({n_control} control byte(s) in the first {len(head)} bytes)"
        )
    return "utf-8"


def _is_utf8_problem(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, UnicodeDecodeError) or "utf8" in msg or "utf-8" in msg


def _unique_names(columns) -> list[str]:
    """Column names with repeats renamed ``name.1``, ``name.2`` ... (the first keeps its name)."""
    seen: set[str] = set(map(str, columns))
    counts: dict[str, int] = {}
    out = []
    for c in map(str, columns):
        if c not in counts:
            counts[c] = 0
            out.append(c)
            continue
        k = counts[c]
        while True:
            k += 1
            cand = f"{c}.{k}"
            if cand not in seen:
                break
        counts[c] = k
        seen.add(cand)
        out.append(cand)
    return out


def read_csv(path: str | os.PathLike, string_columns: Iterable[str] = (), columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Read a CSV file with pyarrow (multi-threaded, arrow-backed strings: lean for millions of rows).

    ``columns`` (matched case-insensitively; names the file lacks are ignored): read only these, in file
    order — the others are never parsed or converted (OSV5M's 32-column ``train.csv``: a few columns of
    4.9 M rows instead of 2.9 GB of text in memory). ``None``: every column.

    Only empty fields are missing values: strings such as ``"NA"`` (Namibia's country code) are kept
    as they are. ``string_columns`` (matched case-insensitively) are read as strings without type inference —
    used for ids and for coordinates, which are parsed leniently later.

    Text is decoded at read time, so every text column (and column name) comes out as ``str``: UTF-8
    (a byte-order mark is dropped), UTF-16 when the file starts with its byte-order mark, else — with a
    logged warning naming the file and the encoding used — the first of :data:`FALLBACK_ENCODINGS` that
    decodes the file. Repeated column names get a ``.1``, ``.2`` ... suffix (the first one keeps its name).

    Raises:
        DatasetError: the file is missing, a directory, empty, binary or not parseable CSV (one line
        naming the file).
    """
    import pyarrow as pa  # pyarrow: heavy, loaded only when a table is read
    import pyarrow.csv as pcsv  # pyarrow: heavy, loaded only when a table is read

    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not a CSV file")
    if not path.is_file():
        raise DatasetError(f"CSV file not found: {path}")
    first = _sniff_encoding(path)
    encodings = [first] + (list(FALLBACK_ENCODINGS) if first == "utf-8" else [])
    wanted = {c.strip().lower() for c in string_columns}
    keep = None if columns is None else {c.strip().lower() for c in columns}
    table = None
    for i, enc in enumerate(encodings):
        last = i == len(encodings) - 1
        read_options = pcsv.ReadOptions(encoding="utf8" if enc == "utf-8" else enc)
        try:
            # The column names first, so string_columns may name columns that exist only in some files.
            with pcsv.open_csv(path, read_options=read_options) as reader:
                names = reader.schema.names
            types = {c: pa.string() for c in names if c.strip().lower() in wanted}
            include = [c for c in names if c.strip().lower() in keep] if keep is not None else []
            table = _read_streaming(path, read_options, names, types, include)
        except (pa.ArrowException, UnicodeDecodeError) as e:
            if not last and _is_utf8_problem(e):
                continue  # not this encoding: try the next
            raise DatasetError(f"{path}: cannot read as CSV: {one_line(e)}") from None
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read as CSV: {one_line(e)}") from None
        if not last and any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
            continue  # arrow keeps text that is not valid UTF-8 as bytes: decode it properly instead
        if enc not in ("utf-8", "utf-16"):
            log.warning("%s: not valid UTF-8; read it as %s", path, enc)
        break
    df = table.to_pandas(self_destruct=True, split_blocks=True)  # frees each Arrow column once converted
    del table
    if df.columns.duplicated().any():
        dups = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        log.warning("%s: repeated column name(s) %s; the first of each is used, the others get a .N suffix", path, dups)
        df.columns = _unique_names(df.columns)
    return df


#: Bytes of CSV text parsed at a time: the memory a read needs beyond its result is a few of these.
_BLOCK_BYTES = 4 << 20
#: What a column's type becomes when a later block does not fit the type inferred from the first one.
_WIDER = {"null": "int64", "int64": "double"}


def _read_streaming(path: Path, read_options, names: list[str], types: dict, include: list[str]):
    """The CSV as an Arrow table, read block by block (:func:`pyarrow.csv.open_csv`): the whole-file
    reader holds the file's text in memory at once (1.2 GB peak for a 740 MB file), this a few blocks.

    The streaming reader infers each column's type from the first block; when a later block does not
    fit (``1.5`` in a column that started with integers), the column is widened — null → int64 →
    float64 → string, as the whole-file reader's inference does — and the file read again.
    """
    import pyarrow as pa  # pyarrow: heavy, loaded only when a table is read
    import pyarrow.csv as pcsv  # pyarrow: heavy, loaded only when a table is read

    fixed, types = set(types), dict(types)
    read_options = pcsv.ReadOptions(encoding=read_options.encoding, block_size=_BLOCK_BYTES)
    for _ in range(3 * len(names) + 1):
        convert = pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True, include_columns=include)
        try:
            with pcsv.open_csv(path, read_options=read_options, convert_options=convert) as reader:
                schema = reader.schema
                return pa.Table.from_batches(list(reader), schema=schema)
        except pa.ArrowInvalid as e:
            m = re.match(r"In CSV column #(\d+): .*CSV conversion error to (\w+)", str(e))
            if m is None or int(m.group(1)) >= len(names) or names[int(m.group(1))] in fixed:
                raise
            col = names[int(m.group(1))]
            types[col] = pa.type_for_alias(_WIDER.get(m.group(2), "string"))
    raise DatasetError(f"{path}: cannot settle the column types")  # pragma: no cover — each retry fixes one column for good


def parse_coords(lat, lon) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse latitude/longitude values leniently and say which rows are unusable.

    Args:
        lat, lon: array-likes of numbers or strings (degrees); unparseable values count as missing.

    Returns:
        ``(lat, lon, reasons)``: float64 arrays of shape (N,), and an object array of shape (N,)
        holding ``None`` for usable rows and a human-readable reason for the others (missing, not
        finite or out of range: lat must be in [-90, 90], lon in [-180, 180]).
    """
    lat_a, lon_a = _floats(lat), _floats(lon)
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


def _floats(values) -> np.ndarray:
    """``values`` as a new float64 array, anything unparseable NaN. A column of text goes through Arrow's
    cast (18x faster than pandas' on millions of coordinates) unless a value needs pandas' leniency
    (blanks around a number, words): then the whole column goes through ``pd.to_numeric``."""
    import pyarrow as pa  # pyarrow: heavy, loaded only when a table is read
    import pyarrow.compute as pc  # pyarrow: heavy, loaded only when a table is read

    s = pd.Series(values)
    if isinstance(s.dtype, pd.StringDtype):
        try:
            return np.array(pc.cast(pa.array(s), pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    return pd.to_numeric(s, errors="coerce").to_numpy(np.float64, copy=True)


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
    if limit is not None and limit >= 0 and (m := limit_prefix(ids, usable, limit)) < len(ids):
        # only the first m rows can matter: drop the rest before anything is copied (a 100 k slice of 4.9 M rows)
        ids, reasons, usable = ids.iloc[:m], reasons[:m], usable[:m]
        sources = sources.iloc[:m] if hasattr(sources, "iloc") else sources[:m]
        lat, lon = np.asarray(lat)[:m], np.asarray(lon)[:m]
        metadata = metadata.iloc[:m] if metadata is not None else None
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


def limit_prefix(ids: pd.Series, usable: np.ndarray, limit: int) -> int:
    """How many leading rows decide :func:`finish_table`'s answer for ``limit``: up to, not including, the
    (limit+1)-th row still usable once repeated ids are dropped (whether a row is a repeat depends only on
    the rows before it, so nothing after it can change the answer); ``len(ids)`` when there is none."""
    pos = np.flatnonzero(usable)
    k = limit + 1
    while k <= len(pos):
        first = ~ids.iloc[pos[:k]].duplicated(keep="first").to_numpy()
        n_first = int(first.sum())
        if n_first > limit:
            return int(pos[:k][first][limit])
        k += limit + 1 - n_first
    return len(ids)


def _where(dataset: dict) -> str:
    return str(dataset.get("csv") or dataset.get("root"))


def walk_images(
    root: str | os.PathLike,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    skipped: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Paths (as str, deterministic) of all image files under ``root``, recursively.

    Order: depth-first, names sorted; a folder's own files come before those of its sub-folders.

    Hidden files and directories (starting with ``.``) are ignored. Symlinked folders are followed,
    except a symlink loop (a link back to a folder that encloses it, e.g. ``sub/up -> ..``): it is
    skipped, as are entries that cannot be examined (e.g. a symlink pointing at itself) and folders
    that cannot be listed. Each skipped entry is logged as a warning and, when ``skipped`` is given,
    appended to it as ``(path, reason)``.
    """
    exts = tuple(e.lower() for e in extensions)
    out: list[str] = []

    def skip(path: str, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        if skipped is not None:
            skipped.append((path, reason))

    def key_of(st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    root_s = os.fspath(root)
    try:
        top: tuple[tuple[int, int], ...] = (key_of(os.stat(root_s)),)
    except OSError:
        top = ()
    # Each folder to walk carries the (device, inode) of itself and its enclosing folders: a link
    # back to one of them is a loop. Every other folder is walked, so the walk ends on any tree.
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(root_s, top)]
    while stack:
        d, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            skip(d, f"cannot list folder: {e.strerror or e}")
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=True)
                key = key_of(e.stat(follow_symlinks=True)) if is_dir else None
            except OSError as err:
                if err.errno == errno.ELOOP:
                    skip(e.path, f"symlink loop: {err.strerror}")
                else:
                    skip(e.path, f"cannot examine: {err.strerror or err}")
                continue
            if is_dir:
                if key in ancestors:
                    skip(e.path, f"symlink loop: leads back to {os.path.realpath(e.path)}, a folder that encloses it")
                    continue
                subdirs.append((e.path, ancestors + (key,)))
            elif e.name.lower().endswith(exts):
                out.append(e.path)
        stack.extend(reversed(subdirs))
    return out


def skipped_frame(skipped: Sequence[tuple[str, str]], base: str | os.PathLike) -> pd.DataFrame:
    """:func:`walk_images`' ``(path, reason)`` pairs as a skipped table (``id``: the path relative to
    ``base``, ``/``-separated), for :func:`finish_table`'s ``extra_skipped``."""
    ids = [Path(os.path.relpath(p, base)).as_posix() for p, _ in skipped]
    return pd.DataFrame({"id": pd.Series(ids, dtype="str"), "reason": pd.Series([r for _, r in skipped], dtype="str")})


def stem_index(paths: Sequence[str] | pd.Series, sources: Sequence[str] | pd.Series | None = None) -> pd.DataFrame:
    """A table ``id`` (file stem: name without folders and last extension) → ``source`` (default:
    the path itself); for a repeated stem the first occurrence wins. Vectorised (arrow strings)."""
    p = pd.Series(paths, dtype="str").reset_index(drop=True)
    stem = p.str.replace(r"^.*[/\\]", "", regex=True).str.replace(r"\.[^.]*$", "", regex=True)
    src = p if sources is None else pd.Series(sources, dtype="str").reset_index(drop=True)
    idx = pd.DataFrame({"id": stem, "source": src})
    return idx.drop_duplicates("id", keep="first").reset_index(drop=True)
