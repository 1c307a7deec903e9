"""Local webdataset shards: uncompressed ``.tar`` files whose samples are ``<key>.jpg`` (or
``.jpeg``/``.png``/``.webp``) plus ``<key>.json`` holding the coordinates and metadata.

The root is a directory (all ``*.tar`` below it), a single ``.tar`` file, a glob
(``shards/train-*.tar``) or a brace range (``shards/train-{000000..000099}.tar``). Members are
indexed with :mod:`tarfile` without extracting anything; the image source is
``tar://TARPATH::MEMBER``, which :func:`geosolver.images.read_bytes` reads in place at the member's
byte offset. The webdataset key convention applies: the key is the member path up to the first dot
of its file name. The id is the JSON's ``id`` (or ``key``) field when present, else the key.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from geosolver.data.common import (
    LAT_NAMES,
    LON_NAMES,
    DatasetError,
    find_column,
    finish_table,
    parse_coords,
)
from geosolver.images import tar_source
from geosolver.progress import tqdm
from geosolver.remote import expand_url_shards, open_url

log = logging.getLogger("geosolver.data.webdataset")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str | os.PathLike, split: str | None = None) -> list[Path]:
    """The shard files named by ``spec`` (directory, file, glob or ``{a..b}`` range), sorted.

    With ``split`` and a directory ``spec``, ``spec/<split>`` is used when it exists, otherwise the
    shards whose file name contains ``split``.
    """
    s = os.fspath(spec)
    if "://" in s:  # s3://, memory://, ... : listed with fsspec (geosolver.remote)

        return expand_url_shards(s, split)  # type: ignore[return-value]  (URL strings)
    p = Path(s)
    if p.is_dir():
        if split and (p / split).is_dir():
            p = p / split
        shards = sorted(x for x in p.rglob("*.tar") if x.is_file())
        if split and p.name != split:
            shards = [x for x in shards if split in x.name]
        return shards
    if p.is_file():
        return [p]
    m = _BRACE.search(s)
    if m:
        a, b = m.group(1), m.group(2)
        width = len(a)
        names = [s[: m.start()] + str(i).zfill(width) + s[m.end() :] for i in range(int(a), int(b) + 1)]
        return [Path(n) for x in names for n in (sorted(glob.glob(x)) if glob.has_magic(x) else [x]) if Path(n).is_file()]
    return [Path(x) for x in sorted(glob.glob(s)) if Path(x).is_file()]


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: ``dir/abc.seg.jpg`` → (``dir/abc``, ``seg.jpg``)."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), (ext.lower() if dot else "")


def _scan_shard(path: Path) -> list[dict]:
    """One record per sample key: ``key``, ``image`` (member name or None), ``json`` (dict or None),
    ``error`` (why the JSON could not be parsed, or None). Sample order is tar order."""
    samples: dict[str, dict] = {}
    try:
        if "://" in os.fspath(path):
            tf = tarfile.open(fileobj=open_url(os.fspath(path)), mode="r:")
        else:
            tf = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
        raise DatasetError(f"{path}: not an uncompressed tar file ({e}); compressed shards are not supported") from None
    with tf:
        for m in tf:
            if not m.isfile():
                continue
            key, ext = _split_key(m.name)
            rec = samples.setdefault(key, {"key": key, "image": None, "json": None, "error": None})
            if ext in IMAGE_EXTS and rec["image"] is None:
                rec["image"] = m.name
            elif ext == "json":
                try:
                    f = tf.extractfile(m)
                    obj = json.loads(f.read().decode("utf-8")) if f is not None else None
                    if not isinstance(obj, dict):
                        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                    rec["json"] = obj
                except (ValueError, UnicodeDecodeError) as e:
                    rec["error"] = f"bad JSON in {m.name}: {e}"
    return list(samples.values())


def _looks_usable(rec: dict) -> bool:
    """Whether a scanned sample has an image and valid coordinates under its own JSON keys."""
    j = rec["json"]
    if rec["image"] is None or not j or rec["error"]:
        return False
    la, lo = find_column(list(j), LAT_NAMES), find_column(list(j), LON_NAMES)
    if la is None or lo is None:
        return False
    _, _, reasons = parse_coords([j[la]], [j[lo]])
    return reasons[0] is None


def _flat(v):
    """JSON values as table cells: scalars stay, lists/objects become JSON text."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def read_webdataset(
    root: str | os.PathLike,
    split: str | None = None,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Read local webdataset shards (see the module docstring).

    Args:
        root: a directory of ``.tar`` shards, one shard, a glob or a ``{a..b}`` brace range.
        split: with a directory root, read ``ROOT/<split>`` (or the shards named ``*<split>*``).
        csv: not used by this reader (must be ``None``).
        limit: keep the first ``limit`` usable samples (shards are scanned only as far as needed).

    Returns:
        The reader table: ``id``, ``source`` (``tar://TARPATH::MEMBER``), ``lat``, ``lon``, then the
        remaining JSON fields (in first-seen order) and ``shard``, ``key``; ``attrs["skipped"]``
        lists samples without an image, without JSON, or with bad coordinates.
    """
    if csv is not None:
        raise DatasetError("the webdataset reader takes coordinates from each sample's .json; it does not read a CSV")
    shards = expand_shards(root, split)
    if not shards:
        raise DatasetError(f"no .tar shards found at {os.fspath(root)}" + (f" for split {split!r}" if split else ""))
    records: list[dict] = []
    n_usable = 0
    for shard in tqdm(shards, desc="indexing shards", unit="shard", disable=len(shards) < 2):
        for rec in _scan_shard(shard):
            rec["shard"] = shard if "://" in os.fspath(shard) else os.path.abspath(shard)
            records.append(rec)
            n_usable += _looks_usable(rec)
        if limit is not None and n_usable >= limit:
            break  # later shards cannot contribute to the first `limit` usable rows
    keys = [r["json"] for r in records if r["json"]]
    all_fields: dict[str, None] = {}
    for j in keys:
        for k in j:
            all_fields.setdefault(k, None)
    lat_key = find_column(list(all_fields), LAT_NAMES)
    lon_key = find_column(list(all_fields), LON_NAMES)
    where = ", ".join(map(str, shards[:3])) + (" ..." if len(shards) > 3 else "")
    if records and keys and (lat_key is None or lon_key is None):
        raise DatasetError(
            f"{where}: the samples' JSON has no {'latitude' if lat_key is None else 'longitude'} field "
            f"(looked for {', '.join(LAT_NAMES if lat_key is None else LON_NAMES)}, case-insensitive); "
            f"fields found: {list(all_fields)}"
        )
    id_key = find_column(list(all_fields), ("id", "key", "__key__"))
    meta_fields = [k for k in all_fields if k not in (lat_key, lon_key, id_key)]
    extra = [k for k in ("shard", "key") if k not in meta_fields]  # where each sample lives

    ids, sources, lat_raw, lon_raw, reasons = [], [], [], [], []
    meta_rows: list[list] = []
    for r in records:
        j = r["json"] or {}
        ids.append(str(j[id_key]) if id_key and j.get(id_key) is not None else r["key"])
        sources.append(tar_source(r["shard"], r["image"]) if r["image"] else "")
        lat_raw.append(j.get(lat_key) if lat_key else None)
        lon_raw.append(j.get(lon_key) if lon_key else None)
        if r["error"]:
            reasons.append(r["error"])
        elif r["image"] is None:
            reasons.append("no image in sample")
        elif r["json"] is None:
            reasons.append("no .json in sample")
        else:
            reasons.append(None)
        meta_rows.append([_flat(j.get(k)) for k in meta_fields] + [r[k] for k in extra])
    lat, lon, coord_reasons = parse_coords(pd.Series(lat_raw, dtype=object), pd.Series(lon_raw, dtype=object))
    reasons = np.array([r if r is not None else c for r, c in zip(reasons, coord_reasons)], dtype=object)
    meta = pd.DataFrame(meta_rows, columns=meta_fields + extra)
    dataset = {"kind": "webdataset", "root": os.fspath(root), "split": split, "csv": None, "shards": len(shards)}
    return finish_table(ids, sources, lat, lon, meta, reasons, dataset, limit=limit)
