"""Crash-safe file writes, the one JSON sanitizer and the one version function.

Every file Geosolver writes goes through here: a temporary name in the same directory, an
``fsync`` for the large binary files, then ``os.replace`` — so a reader (or a resumed run)
sees either the old file or the new one, never half of one.

* :func:`jsonable` — the JSON-safe copy of any result (numpy → Python, NaN/inf → ``null``,
  paths → strings); :func:`atomic_write_json` applies it.
* :func:`version` — the installed geosolver version, recorded in manifests and ``config.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_parquet",
    "atomic_write_text",
    "jsonable",
    "sha256_file",
    "temp_target",
    "version",
]


def version() -> str:
    """The installed geosolver version (``geosolver.__version__``)."""
    from geosolver import __version__  # geosolver/__init__.py imports this module: read at call time

    return str(__version__)


def jsonable(o: Any) -> Any:
    """A JSON-safe copy of ``o``: numpy scalars/arrays → Python, non-finite floats → ``None``,
    tuples → lists, dict keys → strings, paths and other objects → ``str``."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    if o is None or isinstance(o, str):
        return o
    return str(o)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


_TMP = re.compile(r"(.+)\.tmp\d+")


def temp_target(name: str) -> str | None:
    """The file a temporary file of these writers was becoming (``shard-00001.npy.tmp4242`` →
    ``shard-00001.npy``), or ``None`` for any other name (``x.tmp``, ``notes.tmp.txt``)."""
    m = _TMP.fullmatch(name)
    return m.group(1) if m else None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` atomically (no fsync: reports, markdown, HTML)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``jsonable(obj)`` as indented JSON atomically."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def atomic_write_parquet(path: str | os.PathLike, df) -> None:
    """Write a DataFrame as parquet (no index) atomically."""
    path = Path(path)
    tmp = _tmp_name(path)
    df = df.copy(deep=False)
    df.attrs = {}  # pandas would try to serialise attrs (e.g. a reader's skipped-rows frame) as JSON
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_npy(path: str | os.PathLike, arr: np.ndarray) -> str:
    """Write ``arr`` as ``.npy`` atomically (fsynced); return the file's sha256."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
