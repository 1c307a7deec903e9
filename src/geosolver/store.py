"""EmbeddingStore: sharded, L2-normalised float16 embeddings plus per-row metadata on disk.

Layout of a store directory (format version 1)::

    manifest.json          encoder identity, dim, dtype, rows, shard list with checksums, config
    shard-00000.npy        float16 (rows, dim), rows L2-normalised
    shard-00000.parquet    one row per embedding, same order: id, lat, lon, metadata columns...
    failures.parquet       id, reason, shard: inputs that could not be read or embedded
    skipped.parquet        id, reason: rows the dataset reader could not use (optional)
    _chunks/               commit records not yet folded into the manifest (only while writing)

**The one write protocol.** Every shard — written by a local run, a torchrun rank, a Ray
actor's result, ``subset`` or ``write_store`` — is *chunk* ``c`` of its store and is committed by
:meth:`StoreWriter.commit_chunk`: ``shard-{c:05d}.npy`` and ``.parquet`` are written under
temporary names and renamed, then the record ``_chunks/chunk-{c:05d}.json`` (rows, inputs,
sha256, failure records) is written atomically — **that record is the commit point**. Chunks may
be committed in any order and by several processes; a retried chunk rewrites the same names, so
nothing is ever duplicated. :meth:`StoreWriter.merge` folds the records into ``manifest.json``
and ``failures.parquet`` in chunk order (the local engine merges after every chunk, distributed
engines once at the end), so the finished store is the same whoever wrote which chunk.

Each shard records ``n_inputs``, the number of input samples it covers (successes plus
failures), so a resumed batch job knows exactly which input rows are done.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from geosolver.errors import StoreError
from geosolver.files import atomic_write_json, atomic_write_npy, atomic_write_parquet, sha256_file, temp_target, version
from geosolver.geo import CoordinateError, validate_coords
from geosolver.numeric import l2_normalize  # noqa: F401  (re-exported: geosolver.store.l2_normalize)
from geosolver.rundir import CONFIG, recorded_command

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FAILURES = "failures.parquet"
SKIPPED = "skipped.parquet"
REQUIRED_COLUMNS = ("id", "lat", "lon")


def check_columns(meta: pd.DataFrame, where: str) -> None:
    """Raise :class:`StoreError` unless ``meta`` has ``id``/``lat``/``lon`` with numeric coordinates."""
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise StoreError(f"{where}: metadata lacks column(s) {missing}; has {list(meta.columns)}")
    for c in ("lat", "lon"):
        if not pd.api.types.is_numeric_dtype(meta[c]) or pd.api.types.is_bool_dtype(meta[c]):
            raise StoreError(f"{where}: column {c!r} holds {meta[c].dtype} values, not numbers (degrees)")


def check_metadata(meta: pd.DataFrame, where: str) -> None:
    """Raise :class:`StoreError` unless ``meta`` has ``id``/``lat``/``lon`` with valid coordinates
    (finite, lat in [-90, 90], lon in [-180, 180])."""
    check_columns(meta, where)
    if len(meta):
        try:
            validate_coords(meta["lat"].to_numpy(), meta["lon"].to_numpy(), where)
        except CoordinateError as e:
            raise StoreError(str(e)) from None


def check_shard(embeddings: np.ndarray, meta: pd.DataFrame, dim: int, where: str = "shard") -> np.ndarray:
    """Validate one shard's content before it is written; returns the embeddings as an array.

    Raises:
        StoreError: wrong shape or dim, row count differing from the metadata, NaN/inf values,
            or metadata without valid ``id``/``lat``/``lon``.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise StoreError(f"{where} embeddings must be (rows, {dim}), got {emb.shape}")
    if len(meta) != emb.shape[0]:
        raise StoreError(f"{where} has {emb.shape[0]} embeddings but {len(meta)} metadata rows")
    if not np.isfinite(emb).all():
        raise StoreError(f"{where} embeddings contain NaN or inf")
    check_metadata(meta, f"{where} metadata")
    return emb


#: the shard stem of chunk ``c``; a manifest listing any other name is refused (no path tricks).
SHARD_PATTERN = re.compile(r"shard-(\d{5,})")
CHUNK_DIR = "_chunks"


def shard_name(chunk: int) -> str:
    """The shard stem of chunk ``chunk``: ``shard-00042``."""
    return f"shard-{int(chunk):05d}"


def chunk_of(name: str) -> int | None:
    """The chunk index of a shard stem (``shard-00042`` → 42), ``None`` for any other name."""
    m = SHARD_PATTERN.fullmatch(str(name))
    return int(m.group(1)) if m else None


def write_shard_files(path: Path, name: str, embeddings: np.ndarray, meta: pd.DataFrame) -> str:
    """Write ``<name>.npy`` (rows L2-normalised, float16) and ``<name>.parquet`` atomically.

    Content must already be checked (:func:`check_shard`). Returns the ``.npy`` file's sha256.
    """
    emb = np.asarray(embeddings)
    emb16 = l2_normalize(emb).astype(np.float16) if emb.shape[0] else np.zeros((0, emb.shape[1]), np.float16)
    digest = atomic_write_npy(Path(path) / f"{name}.npy", np.ascontiguousarray(emb16))
    atomic_write_parquet(Path(path) / f"{name}.parquet", meta.reset_index(drop=True))
    return digest


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest."""

    name: str
    rows: int
    n_inputs: int
    sha256: str

    @classmethod
    def from_json(cls, d: dict) -> "ShardInfo":
        try:
            info = cls(name=d["name"], rows=int(d["rows"]), n_inputs=int(d.get("n_inputs", d["rows"])), sha256=str(d["sha256"]))
            if info.rows < 0 or info.n_inputs < 0:
                raise ValueError(f"rows {info.rows}, n_inputs {info.n_inputs}: a count cannot be negative")
            return info
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"manifest entry for shard {d.get('name')!r} is damaged ({type(e).__name__}: {e}); "
                             "the manifest lists name, rows, n_inputs and sha256 per shard") from None


def encoder_compatible(a: dict, b: dict) -> tuple[bool, str]:
    """Whether two encoder identities (from manifests) embed into the same space.

    Returns:
        ``(ok, reason)``; ``reason`` says what differs when not ok.
    """
    for key in ("name", "dim", "revision"):
        if a.get(key) != b.get(key):
            return False, f"encoder {key} differs: {a.get(key)!r} vs {b.get(key)!r}"
    return True, ""


LOCK = ".lock"
#: the files a store writer creates at the top of its directory; only these (and their temporary
#: names) are ever removed by :meth:`StoreWriter._cleanup` — never a file of the user's.
STORE_FILE = re.compile(r"shard-\d{5,}\.(?:npy|parquet)|manifest\.json|failures\.parquet|skipped\.parquet")
SHARD_FILE = re.compile(r"(shard-\d{5,})\.(?:npy|parquet)")
RECORD_FILE = re.compile(r"chunk-\d{5,}\.json")


def check_store_folder(path: str | os.PathLike) -> None:
    """Refuse to write a store into an existing folder that holds anything but a store.

    Allowed: a missing or empty folder, a store (``manifest.json``), or a run folder that a
    :class:`~geosolver.rundir.RunDir` has just claimed (only its ``config.json``).

    Raises:
        StoreError: ``path`` is a file, or a non-empty folder without a store's manifest
            (the user's files are never turned into a store, nor cleaned up as one).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} is a file; a store is a directory (pick another --out)")
    if not path.is_dir():
        return
    names = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if not names or MANIFEST in names or (names == [CONFIG] and recorded_command(path)):
        return
    shown = ", ".join(names[:4]) + (f", … ({len(names)} entries)" if len(names) > 4 else "")
    raise StoreError(f"{path} already holds files that are not an embedding store ({shown}); "
                     "pick a new or empty folder for --out (nothing was written)")


@contextlib.contextmanager
def write_lock(path: str | os.PathLike):
    """Hold the store directory's write lock (``flock`` on ``PATH/.lock``) for a writing job.

    The lock dies with its process, so a killed job never leaves a stale lock behind.

    Raises:
        StoreError: another process holds the lock (two jobs writing one store).
    """
    import fcntl  # fcntl: POSIX only

    path = Path(path)
    check_store_folder(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    f = open(path / LOCK, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another process is writing {path} (its lock {path / LOCK} is held); "
                             "wait for it to finish or pick another --out") from None
        yield
    finally:
        f.close()
        if created and [p.name for p in path.iterdir()] == [LOCK]:  # the job failed before writing anything
            (path / LOCK).unlink(missing_ok=True)
            path.rmdir()


def _empty_failures(with_shard: bool = True) -> pd.DataFrame:
    cols = ["id", "reason", "shard"] if with_shard else ["id", "reason"]
    return pd.DataFrame({c: pd.Series(dtype=str) for c in cols})


class StoreWriter:
    """Writes a store directory through the one commit protocol (see the module docstring).

    Args:
        path: the store directory (created if missing).
        encoder: encoder identity, at least ``name`` and ``dim`` (see :meth:`Encoder.identity`).
        config: the command/configuration that produced the store, kept in the manifest.
        resume: if the directory already holds a store, continue it (encoder must match);
            otherwise an existing store is an error.
        exclusive: this writer is the store's only writer right now, so opening it may remove
            what killed writers left behind (temporary files, shard files no commit refers to).
            Distributed writers (torchrun ranks) pass ``False``.
    """

    def __init__(self, path: str | os.PathLike, encoder: dict, config: dict | None = None, resume: bool = True,
                 exclusive: bool = True):
        self.path = Path(path)
        if "dim" not in encoder or "name" not in encoder:
            raise StoreError(f"encoder identity needs 'name' and 'dim', got {encoder}")
        self.dim = int(encoder["dim"])
        check_store_folder(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        mpath = self.path / MANIFEST
        if mpath.exists():
            if not resume:
                raise StoreError(f"{self.path} already holds a store; pass resume=True or pick another --out")
            self.manifest = read_manifest(self.path)
            ok, why = encoder_compatible(self.manifest["encoder"], encoder)
            if not ok:
                raise StoreError(f"cannot resume {self.path}: {why}")
            if config is not None:
                self.manifest.setdefault("resumed_with", []).append(config)
            if exclusive:
                self._cleanup()
        else:
            self.manifest = {
                "format_version": FORMAT_VERSION,
                "geosolver_version": version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "encoder": dict(encoder),
                "dim": self.dim,
                "dtype": "float16",
                "normalized": True,
                "rows": 0,
                "n_inputs": 0,
                "complete": False,
                "shards": [],
                "config": config or {},
            }
            atomic_write_json(mpath, self.manifest)

    # -- state ----------------------------------------------------------------------------
    @property
    def shards(self) -> list[ShardInfo]:
        """Shards listed in the manifest (merged), in chunk order."""
        return [ShardInfo.from_json(s) for s in self.manifest["shards"]]

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def n_inputs_done(self) -> int:
        """Input samples covered by merged shards (successes plus failures)."""
        return int(self.manifest["n_inputs"])

    def _record_path(self, chunk: int) -> Path:
        return self.path / CHUNK_DIR / f"chunk-{int(chunk):05d}.json"

    def _records(self) -> dict[int, Path]:
        cdir = self.path / CHUNK_DIR
        out: dict[int, Path] = {}
        if cdir.is_dir():
            for p in cdir.glob("chunk-*.json"):
                stem = p.stem[len("chunk-"):]
                if stem.isdigit():
                    out[int(stem)] = p
        return out

    def committed(self) -> set[int]:
        """Chunks whose shard is committed: listed in the manifest or holding a commit record."""
        listed = {chunk_of(s["name"]) for s in self.manifest["shards"]}
        return {c for c in listed if c is not None} | set(self._records())

    def _cleanup(self) -> None:
        """Remove what killed writers left: temporary files of the store's own files and shard files
        that no commit refers to. Only names a store writer makes (:data:`STORE_FILE`) are touched,
        so a file of the user's in the folder (``notes.tmp``, ``shard-00001.backup.npy``) stays."""
        keep = {shard_name(c) for c in self.committed()}
        for p in self.path.iterdir():
            tmp_of = temp_target(p.name)
            shard = SHARD_FILE.fullmatch(p.name)
            if p.is_file() and ((tmp_of and STORE_FILE.fullmatch(tmp_of)) or (shard and shard.group(1) not in keep)):
                p.unlink(missing_ok=True)
        cdir = self.path / CHUNK_DIR
        if cdir.is_dir():
            for p in cdir.iterdir():
                tmp_of = temp_target(p.name)
                if p.is_file() and tmp_of and RECORD_FILE.fullmatch(tmp_of):
                    p.unlink(missing_ok=True)

    # -- the commit protocol --------------------------------------------------------------
    def commit_chunk(
        self,
        chunk: int,
        embeddings: np.ndarray,
        meta: pd.DataFrame,
        failures: Sequence[dict] | pd.DataFrame | None = None,
        n_inputs: int | None = None,
    ) -> ShardInfo:
        """Commit chunk ``chunk`` as shard ``shard-{chunk:05d}``: shard files, then the record.

        Safe from any process and in any order; committing a chunk again replaces it.

        Args:
            chunk: chunk index (>= 0).
            embeddings: ``(rows, dim)`` float array; rows are L2-normalised and stored as float16.
            meta: one row per embedding with at least ``id``, ``lat``, ``lon`` (degrees).
            failures: records ``{"id", "reason"}`` for inputs of this chunk that failed.
            n_inputs: input samples this chunk covers; default ``rows + len(failures)``.
        """
        if int(chunk) < 0:
            raise StoreError(f"chunk index must be >= 0, got {chunk}")
        name = shard_name(chunk)
        emb = check_shard(embeddings, meta, self.dim, where=f"{self.path.name}/{name}")
        fail_df = failures if isinstance(failures, pd.DataFrame) else pd.DataFrame(list(failures or []))
        fail_df = fail_df[["id", "reason"]].astype(str) if len(fail_df) else _empty_failures(with_shard=False)
        digest = write_shard_files(self.path, name, emb, meta)
        n_in = int(n_inputs) if n_inputs is not None else emb.shape[0] + len(fail_df)
        info = ShardInfo(name=name, rows=int(emb.shape[0]), n_inputs=n_in, sha256=digest)
        (self.path / CHUNK_DIR).mkdir(exist_ok=True)
        atomic_write_json(self._record_path(chunk), {**info.__dict__, "failures": fail_df.to_dict("records")})
        return info

    def merge(self, complete: bool = False, expect_chunks: int | None = None, **extra: Any) -> None:
        """Fold every commit record into ``manifest.json`` and ``failures.parquet``, in chunk order.

        Args:
            complete: mark the store complete (then leftover temporary files are removed).
            expect_chunks: with ``complete``, the number of chunks the store must hold
                (``0..expect_chunks-1``); a missing one is a :class:`StoreError`.
            extra: fields added to the manifest (e.g. ``last_run``).
        """
        records = self._records()
        if complete and expect_chunks is not None:
            missing = sorted(set(range(expect_chunks)) - self.committed())
            if missing:
                raise StoreError(
                    f"{self.path}: {len(missing)} of {expect_chunks} chunk(s) not committed yet (first: {missing[:5]}); "
                    "finish or re-run the embedding, then merge"
                )
        by_chunk = {chunk_of(s["name"]): s for s in self.manifest["shards"]}
        old_fail = self._failures_on_disk()
        fails = {c: old_fail[old_fail["shard"] == s["name"]] for c, s in by_chunk.items()}
        for c, rp in records.items():  # a record wins over an older listing of the same chunk
            rec = json.loads(rp.read_text())
            by_chunk[c] = {k: rec[k] for k in ("name", "rows", "n_inputs", "sha256")}
            f = pd.DataFrame(rec["failures"], columns=["id", "reason"]).astype(str)
            fails[c] = f.assign(shard=rec["name"])
        order = sorted(by_chunk)
        shards = [by_chunk[c] for c in order]
        parts = [fails[c] for c in order if len(fails[c])]
        failures = pd.concat(parts, ignore_index=True).astype(str) if parts else _empty_failures()
        if records or complete or not (self.path / FAILURES).exists():
            atomic_write_parquet(self.path / FAILURES, failures)
        self.manifest["shards"] = shards
        self.manifest["rows"] = int(sum(s["rows"] for s in shards))
        self.manifest["n_inputs"] = int(sum(s["n_inputs"] for s in shards))
        self.manifest["n_failures"] = int(len(failures))
        self.manifest["complete"] = bool(complete)
        self.manifest.update(extra)
        atomic_write_json(self.path / MANIFEST, self.manifest)
        for rp in records.values():  # folded: the manifest now lists them
            rp.unlink(missing_ok=True)
        if complete:
            self._cleanup()
            cdir = self.path / CHUNK_DIR
            if cdir.is_dir() and not any(cdir.iterdir()):
                cdir.rmdir()

    def _failures_on_disk(self) -> pd.DataFrame:
        fp = self.path / FAILURES
        return pd.read_parquet(fp) if fp.exists() else _empty_failures()

    # -- sequential writing (subset, write_store, small tools) ----------------------------
    def write_shard(
        self,
        embeddings: np.ndarray,
        meta: pd.DataFrame,
        failures: Sequence[dict] | pd.DataFrame | None = None,
        n_inputs: int | None = None,
    ) -> ShardInfo:
        """Append one shard: commit it as the next chunk and merge (see :meth:`commit_chunk`)."""
        done = self.committed()
        info = self.commit_chunk(max(done) + 1 if done else 0, embeddings, meta, failures, n_inputs)
        self.merge()
        return info

    def record_skipped(self, skipped: pd.DataFrame) -> None:
        """Keep the reader's skipped rows (id, reason) beside the store (rewritten atomically)."""
        df = pd.DataFrame(skipped)[["id", "reason"]].astype(str)
        atomic_write_parquet(self.path / SKIPPED, df)
        self.manifest["n_skipped"] = int(len(df))
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def finalize(self, expect_chunks: int | None = None, **extra: Any) -> "EmbeddingStore":
        """Merge, mark the store complete (recording ``extra`` manifest fields) and open it."""
        self.merge(complete=True, expect_chunks=expect_chunks, **extra)
        return EmbeddingStore(self.path)


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the store at ``path``, with its shard names checked.

    Raises:
        StoreError: no manifest, invalid JSON, an unsupported format, or a shard entry that is
            not a plain ``shard-NNNNN`` name of this store (never read outside the directory).
    """
    path = Path(path)
    mpath = path / MANIFEST
    if not path.exists():
        raise StoreError(f"{path} does not exist; build a store there with `geosolver embed`, or check the path")
    if not mpath.is_file():
        raise StoreError(f"{path} is not an embedding store (no {MANIFEST}); build one with `geosolver embed`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        fv = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise StoreError(f"{path}: unsupported store format {fv}")
    shards = manifest.get("shards", [])
    if not isinstance(shards, list):
        raise StoreError(f"{mpath}: 'shards' is {type(shards).__name__}, not a list; the manifest is damaged")
    for s in shards:
        if not isinstance(s, dict) or chunk_of(s.get("name", "")) is None:
            name = s.get("name") if isinstance(s, dict) else s
            raise StoreError(f"{mpath}: shard entry {name!r} is not a shard name of this store (shard-NNNNN); the manifest is damaged")
    _check_manifest_fields(manifest, mpath)
    return manifest


def _count(v: Any) -> int | None:
    """``v`` as a non-negative int (JSON integers only), else ``None``."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _check_manifest_fields(manifest: dict, mpath: Path) -> None:
    """The cheap checks every open makes: an encoder identity, a positive integer dim, row counts
    that are non-negative integers and agree with the shard list."""
    damaged = "the manifest is damaged; re-embed the store (or restore manifest.json)"
    enc = manifest.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str):
        raise StoreError(f"{mpath}: no encoder identity (an 'encoder' object with a 'name'); {damaged}")
    dim = manifest.get("dim")
    if not _count(dim):
        raise StoreError(f"{mpath}: dim {dim!r} is not a positive integer; {damaged}")
    rows = manifest.get("rows")
    if _count(rows) is None:
        raise StoreError(f"{mpath}: rows {rows!r} is not a non-negative integer; {damaged}")
    listed = sum(ShardInfo.from_json(s).rows for s in manifest.get("shards", []))
    if listed != rows:
        raise StoreError(f"{mpath}: rows {rows} but its shards list {listed} rows; {damaged}")


class EmbeddingStore:
    """Read access to a store directory: memmapped shards, metadata as a DataFrame.

    Args:
        path: the store directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.shards = [ShardInfo.from_json(s) for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)
        self._meta: pd.DataFrame | None = None
        self._coords_checked = False
        self._mm: dict[int, np.ndarray] = {}

    # -- basic facts ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> dict:
        return dict(self.manifest["encoder"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete", False))

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, encoder={self.encoder.get('name')!r})"

    # -- metadata -------------------------------------------------------------------------
    @property
    def metadata(self) -> pd.DataFrame:
        """All rows' metadata in store order (cached). Columns: id, lat, lon, ..."""
        if self._meta is None:
            parts = [self.shard_metadata(i) for i in range(len(self.shards))]
            parts = [p for p in parts if len(p)] or parts[:1]
            self._meta = (
                pd.concat(parts, ignore_index=True)
                if parts
                else pd.DataFrame({"id": pd.Series(dtype=str), "lat": pd.Series(dtype=float), "lon": pd.Series(dtype=float)})
            )
        return self._meta

    def shard_metadata(self, i: int) -> pd.DataFrame:
        """Shard ``i``'s metadata, checked: readable, the manifest's row count, an ``id`` column and
        numeric ``lat``/``lon`` (their ranges: :meth:`coords` and :meth:`verify`; Play mode skips
        the rows without valid coordinates itself).

        Raises:
            StoreError: the parquet is missing or unreadable, or its rows or columns are damaged;
                the message names the file and points to ``--verify``.
        """
        pq = self.path / f"{self.shards[i].name}.parquet"
        hint = f"run `geosolver info {self.path} --verify`, then re-embed the store"
        try:
            meta = pd.read_parquet(pq)
        except FileNotFoundError:
            raise StoreError(f"{pq} missing (the shard's metadata: id, lat, lon); {hint}") from None
        except Exception as e:  # noqa: BLE001 — pyarrow raises many types for a damaged file
            first = str(e).splitlines()[0] if str(e) else ""
            raise StoreError(f"{pq} cannot be read ({type(e).__name__}: {first}); {hint}") from None
        if len(meta) != self.shards[i].rows:
            raise StoreError(f"{pq} has {len(meta)} rows, manifest says {self.shards[i].rows}; {hint}")
        check_columns(meta, str(pq))
        return meta

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lat, lon)`` float64 arrays in degrees, in store order, every one checked.

        Raises:
            StoreError: a coordinate is NaN, infinite or out of range (a damaged or hand-edited
                shard: a guess voted from it would be confidently wrong); names the shard's parquet.
        """
        m = self.metadata
        lat, lon = m["lat"].to_numpy(np.float64), m["lon"].to_numpy(np.float64)
        if not self._coords_checked:
            for i, s in enumerate(self.shards):
                lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
                check_metadata(m.iloc[lo:hi], f"{self.path / (s.name + '.parquet')}")
            self._coords_checked = True
        return lat, lon

    @property
    def failures(self) -> pd.DataFrame:
        fp = self.path / FAILURES
        if not fp.exists():
            return pd.DataFrame({"id": pd.Series(dtype=str), "reason": pd.Series(dtype=str), "shard": pd.Series(dtype=str)})
        return pd.read_parquet(fp)

    @property
    def skipped(self) -> pd.DataFrame:
        """Rows the dataset reader could not use (id, reason): never given to the model."""
        fp = self.path / SKIPPED
        if not fp.exists():
            return pd.DataFrame({"id": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
        return pd.read_parquet(fp)

    # -- embeddings -----------------------------------------------------------------------
    def shard_embeddings(self, i: int) -> np.ndarray:
        """Shard ``i``'s embeddings as a read-only float16 memmap, shape ``(rows_i, dim)``.

        The first read of a shard checks that it opens, has the manifest's shape and a float
        dtype, and holds only finite values (one pass over data that search reads anyway).

        Raises:
            StoreError: the shard is missing, truncated, not a float array, the wrong shape, or
                holds NaN/inf; the message names the shard and points to ``--verify``.
        """
        if i not in self._mm:
            s = self.shards[i]
            f = self.path / f"{s.name}.npy"
            hint = f"run `geosolver info {self.path} --verify`, then re-embed the store"
            try:
                arr = np.load(f, mmap_mode="r")
            except FileNotFoundError:
                raise StoreError(f"{f} is missing; {hint}") from None
            except (ValueError, OSError, EOFError) as e:
                raise StoreError(f"{f} cannot be read as an array ({type(e).__name__}: {e}); {hint}") from None
            if arr.dtype.kind != "f":
                raise StoreError(f"{f} holds {arr.dtype} values, not float embeddings; {hint}")
            if arr.shape != (s.rows, self.dim):
                raise StoreError(f"{f} has shape {arr.shape}, manifest says ({s.rows}, {self.dim}); {hint}")
            for lo in range(0, arr.shape[0], 65536):
                if not np.isfinite(arr[lo : lo + 65536]).all():
                    raise StoreError(f"{f} holds non-finite values (NaN or inf): the shard is damaged; {hint}")
            self._mm[i] = arr
        return self._mm[i]

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray, pd.DataFrame]]:
        """Yield ``(row_offset, embeddings_memmap, metadata)`` shard by shard."""
        for i, s in enumerate(self.shards):
            yield int(self.offsets[i]), self.shard_embeddings(i), self.shard_metadata(i)

    def iter_batches(self, batch_size: int = 65536, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row_offset, embeddings)`` in row order, never more than one batch in RAM."""
        for i in range(len(self.shards)):
            mm = self.shard_embeddings(i)
            for s in range(0, mm.shape[0], batch_size):
                yield int(self.offsets[i]) + s, np.ascontiguousarray(mm[s : s + batch_size], dtype=dtype)

    def embeddings(self, rows: Sequence[int] | np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """Embeddings of ``rows`` (all rows when ``None``) as a contiguous array, shape ``(n, dim)``."""
        if rows is None:
            if len(self) == 0:
                return np.zeros((0, self.dim), dtype)
            return np.concatenate([np.asarray(self.shard_embeddings(i), dtype=dtype) for i in range(len(self.shards))])
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for store of {len(self)} rows")
        out = np.empty((rows.size, self.dim), dtype=dtype)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for i in np.unique(shard_of):
            sel = np.nonzero(shard_of == i)[0]
            local = rows[sel] - self.offsets[i]
            out[sel] = self.shard_embeddings(int(i))[local]
        return out

    # -- derived stores -------------------------------------------------------------------
    def subset(self, rows: Sequence[int] | np.ndarray, out: str | os.PathLike, config: dict | None = None, shard_size: int = 100_000) -> "EmbeddingStore":
        """Write the given rows (in the given order) into a new store at ``out``."""
        rows = np.asarray(rows, dtype=np.int64)
        meta = self.metadata.iloc[rows].reset_index(drop=True)
        cfg = {"subset_of": str(self.path), "rows": int(rows.size)}
        cfg.update(config or {})
        w = StoreWriter(out, self.encoder, config=cfg, resume=False)
        for sl in range(0, rows.size, shard_size):
            idx = rows[sl : sl + shard_size]
            w.write_shard(self.embeddings(idx), meta.iloc[sl : sl + shard_size].reset_index(drop=True))
        return w.finalize()

    def verify(self) -> list[str]:
        """Check every shard's checksum, shape, values and metadata, ids across the store and every
        saved index beside it; one line per problem (empty: fine).

        Never raises on the damage it exists to report (truncated or empty ``.npy``, corrupt or
        missing parquet, checksum mismatch, NaN/inf values, coordinates that are NaN, text or out
        of range, duplicate ids, a ``.faiss`` file that is not the one its ``.json`` records).
        """
        problems = []
        ids = []
        for i, s in enumerate(self.shards):
            f = self.path / f"{s.name}.npy"
            if not f.exists():
                problems.append(f"{f} missing")
            else:
                if sha256_file(f) != s.sha256:
                    problems.append(f"{f} checksum mismatch (the file changed after it was written)")
                try:
                    self._mm.pop(i, None)
                    self.shard_embeddings(i)
                except StoreError as e:
                    problems.append(str(e).split("; run `geosolver info")[0])
            try:
                meta = self.shard_metadata(i)
                check_metadata(meta, str(self.path / f"{s.name}.parquet"))
                ids.append(meta["id"].astype(str))
            except StoreError as e:
                problems.append(str(e).split("; run `geosolver info")[0])
        if ids:
            all_ids = pd.concat(ids, ignore_index=True)
            dup = all_ids[all_ids.duplicated()]
            if len(dup):
                problems.append(f"{self.path}: {len(dup)} duplicate id(s) (first {dup.iloc[0]!r}); an id names one photo")
        return problems

    def describe(self) -> str:
        """A human-readable summary (what `geosolver info` prints)."""
        m = self.manifest
        enc = m["encoder"]
        meta = self.metadata
        lines = [
            f"store       {self.path}",
            f"rows        {len(self):,} in {len(self.shards)} shard(s); failures {m.get('n_failures', 0):,}; complete={self.complete}",
            f"encoder     {enc.get('name')} (revision {enc.get('revision')}) dim={self.dim} dtype={m['dtype']} normalized={m['normalized']}",
        ]
        if enc.get("preprocessing"):
            lines.append(f"preprocess  {enc['preprocessing']}")
        if len(meta):
            lines.append(
                f"lat range   [{meta['lat'].min():.3f}, {meta['lat'].max():.3f}]   lon range [{meta['lon'].min():.3f}, {meta['lon'].max():.3f}]"
            )
        extra = [c for c in meta.columns if c not in REQUIRED_COLUMNS]
        if extra:
            lines.append(f"columns     {', '.join(extra)}")
        lines.append(f"created     {m.get('created')} by geosolver {m.get('geosolver_version')}")
        return "\n".join(lines)


def write_store(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    meta: pd.DataFrame,
    encoder: dict,
    config: dict | None = None,
    shard_size: int = 100_000,
) -> EmbeddingStore:
    """Write in-memory embeddings ``(n, dim)`` and metadata (id, lat, lon, ...) as a new store."""
    emb = np.asarray(embeddings)
    enc = dict(encoder)
    enc.setdefault("dim", int(emb.shape[1]))
    w = StoreWriter(path, enc, config=config, resume=False)
    meta = meta.reset_index(drop=True)
    for s in range(0, max(len(meta), 1), shard_size):
        w.write_shard(emb[s : s + shard_size], meta.iloc[s : s + shard_size].reset_index(drop=True))
    return w.finalize()


def rewrite_metadata(
    path: str | os.PathLike,
    fn,
    log_entry: dict | None = None,
    log_key: str = "metadata_rewrites",
) -> "EmbeddingStore":
    """Rewrite every shard's metadata parquet through ``fn``, atomically per shard.

    Embeddings (and so the manifest checksums) are untouched. Each shard's parquet is written
    under a temporary name and renamed; ``fn`` must keep the rows (same count, same ``id``,
    ``lat``, ``lon``, same order). A run killed half-way leaves every shard either old or new,
    so ``fn`` should be idempotent (e.g. only add columns a shard lacks) and the call repeated.

    Args:
        path: the store directory.
        fn: ``fn(meta: DataFrame, shard_name: str) -> DataFrame`` for one shard.
        log_entry: if given, appended to ``manifest[log_key]`` (a list) after all shards.
        log_key: the manifest key that collects the log entries.

    Returns:
        The store, reopened.
    """
    store = EmbeddingStore(path)
    for s in store.shards:
        ppath = store.path / f"{s.name}.parquet"
        meta = pd.read_parquet(ppath)
        new = fn(meta.copy(), s.name).reset_index(drop=True)
        if len(new) != len(meta):
            raise StoreError(f"{ppath}: metadata rewrite changed the row count ({len(meta)} -> {len(new)})")
        for c in REQUIRED_COLUMNS:
            if c not in new.columns or not new[c].reset_index(drop=True).equals(meta[c].reset_index(drop=True)):
                raise StoreError(f"{ppath}: metadata rewrite changed or dropped required column {c!r}")
        atomic_write_parquet(ppath, new)
    if log_entry is not None:
        manifest = json.loads((store.path / MANIFEST).read_text())
        manifest.setdefault(log_key, []).append(log_entry)
        atomic_write_json(store.path / MANIFEST, manifest)
    return EmbeddingStore(path)
