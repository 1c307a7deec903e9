"""Downloads from the Hugging Face hub: OSV5M and model snapshots, resumable across kills.

* :func:`download_osv5m` — the dataset repo ``osv5m/osv5m`` in its published layout
  (``test.csv``, ``train.csv``, ``images/<split>/NN.zip``) into a root that
  ``geosolver.data.read_dataset("osv5m", root, split=...)`` reads as it is (zips read in place), or
  with ``extract=True`` each zip unpacked to ``images/<split>/NN/`` and removed.
* :func:`download_model` — a model snapshot (an alias of :data:`geosolver.encoders.ENCODER_ALIASES`
  or any hub id) into the HF cache or a directory, so later runs work with ``HF_HUB_OFFLINE=1``.

How it works (huggingface_hub gives the endpoint, token headers, HTTP session and error classes):

1. *Listing.* ``GET /api/{type}s/{repo}[/revision/{rev}]`` gives the commit and ``GET
   .../tree/{commit}?recursive=true`` (paged by ``Link``) every file with its size and the hub's checksum
   (``lfs.oid``: the file's sha256, the value the hub also sends as ``X-Linked-Etag``; the git blob sha1
   for small non-LFS files). Both answers are read with a byte cap
   (:data:`geosolver.hubhttp.MAX_JSON_BYTES`) and a deadline and checked for shape: an HTML page, JSON
   of the wrong shape or an endless answer is one :class:`HubError` line, never a traceback or
   unbounded memory.
2. *What is there.* A file is present when it has the listed size and checksum: the one recorded beside
   it (huggingface_hub's own ``.cache/huggingface/download/<path>.metadata``, so ``hf download`` /
   ``snapshot_download`` and geosolver recognise each other's files) or, with no record, hashed once.
   A zip also counts as present when it was extracted: by ``--extract`` (a marker file) or by the
   dataset authors' script (zip gone, its download record kept, images in ``images/<split>/``).
   ``--dry-run``, the progress total and the summary all count the same "to fetch" list.
3. *Transfer.* Each missing file is fetched with plain GETs of the hub's ``resolve`` URL pinned to the
   commit, into ``<path>.<checksum>.partial`` that is **kept** when the run dies (SIGKILL, Ctrl-C, a
   dropped connection); the next attempt — in the same run after a dropped connection, or the next run
   after a kill — asks for ``Range: bytes=<partial size>-``. A body is read to at most the listed size,
   each network read written out as it arrives. The finished file is hashed (resumed bytes included)
   against the hub's checksum before it is moved into place; a mismatch discards the partial and
   fetches the file once more from byte 0. Runs on one root are serialised by a lock.

Xet: huggingface_hub's own downloader takes the Xet path (``hf_xet``) for Xet-backed files when
``hf_xet`` is installed; that path writes a process-unique temporary file that is deleted when the run
stops (no resume across a kill) and reports progress per file. geosolver does not use it: it always
fetches over HTTP from the ``resolve`` URL, which the hub serves for Xet-backed files too (a redirect to
its Xet bridge), so progress, idempotency, resume and the sha256 check are the same whether ``hf_xet``
is installed or not. Not testable offline: that the real hub's Xet bridge answers a Range request with
``206`` — if it answered ``200`` the transfer notices and restarts that file from byte 0 (correct,
only not resumed).

Every failure is a :class:`HubError` (a :class:`~geosolver.errors.GeosolverError`): one line, exit 2.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, NamedTuple, Sequence
from urllib.parse import quote

from geosolver.errors import GeosolverError
from geosolver.hubhttp import (  # noqa: F401 — HubError, RemoteFile, human_bytes, endpoint: part of this module's API
    HubError,
    RemoteFile,
    endpoint,
    fetch_file,
    file_checksum,
    get_json,
    human_bytes,
    hub_error,
    offline_flag,
    partial_path,
    partial_size,
)
from geosolver.data.common import IMAGE_EXTENSIONS
from geosolver.encoders import ENCODER_ALIASES
from geosolver.progress import tqdm

log = logging.getLogger("geosolver.hub")

OSV5M_REPO = "osv5m/osv5m"
OSV5M_SPLITS = ("test", "train")
#: Seconds to wait for the hub's first answer before saying it cannot be reached.
DEFAULT_TIMEOUT_S = 10.0
#: Written into ``images/<split>/NN/`` when ``NN.zip`` was extracted (and removed).
EXTRACTED_MARKER = ".geosolver-extracted.json"
LOCK_NAME = ".geosolver-download.lock"
#: Most pages of the file list followed (the hub sends 1000 entries a page).
MAX_TREE_PAGES = 2000
#: Model files never needed to load a CLIP with transformers/torch.
MODEL_IGNORE = (
    r".*\.h5$", r".*\.msgpack$", r".*\.onnx(_data)?$", r".*\.ot$", r".*\.tflite$", r".*\.mlmodel$", r".*\.gguf$",
    r"^(onnx|coreml|openvino|tf|flax)/.*", r"^\.gitattributes$",
)


@dataclass
class Listing:
    """A repository at one commit: every file with its size."""

    repo_id: str
    repo_type: str
    revision: str
    sha: str
    files: list[RemoteFile]

    def get(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


@dataclass
class DownloadResult:
    """What a download did (``dry_run``: what it would do)."""

    path: Path
    sha: str
    selected: list[RemoteFile]
    present: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    bytes_total: int = 0
    bytes_to_fetch: int = 0  # the files to fetch, in full
    bytes_partial: int = 0  # of which already on disk in partial files of an interrupted run (resumed)
    bytes_received: int = 0  # what this run received
    seconds: float = 0.0
    dry_run: bool = False
    removed_partials: tuple[int, int] = (0, 0)  # (files, bytes) left by a killed huggingface_hub download, removed


# ----------------------------------------------------------------------------------------------
# talking to the hub
# ----------------------------------------------------------------------------------------------
def _shape(obj) -> str:
    """A short description of a JSON value for an error line."""
    s = json.dumps(obj)
    return f"{type(obj).__name__} {s[:80]}{'…' if len(s) > 80 else ''}"


def _tree_files(page, what: str) -> list[RemoteFile]:
    """The files of one page of the hub's file list, checked for shape (paths stay inside the repository)."""
    if not isinstance(page, list):
        raise HubError(f"{what}: the hub's file list is not a JSON list (got {_shape(page)})")
    out = []
    for e in page:
        path = e.get("path") if isinstance(e, dict) else None
        if not isinstance(path, str) or e.get("type") not in ("file", "directory"):
            raise HubError(f"{what}: the hub's file list has an entry that is not a file or folder: {_shape(e)}")
        if e["type"] != "file":
            continue
        parts = PurePosixPath(path).parts
        if not parts or path.startswith("/") or ".." in parts or "\\" in path or "\0" in path:
            raise HubError(f"{what}: the hub's file list names a path outside the repository: {path!r}")
        size = e.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HubError(f"{what}: the hub's file list gives {path} no valid size: {_shape(e)}")
        lfs = e.get("lfs")
        etag = lfs.get("oid") if isinstance(lfs, dict) else e.get("oid")
        etag = etag if isinstance(etag, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag) else ""
        out.append(RemoteFile(path, size, etag))
    return out


def list_repo(repo_id: str, repo_type: str = "model", revision: str | None = None,
              timeout: float = DEFAULT_TIMEOUT_S, hint: str = "") -> Listing:
    """The repository's commit and every file with its size and checksum, from the hub's own file list.

    Raises:
        HubError: offline, unreachable (after at most ``timeout`` s), no such repo / revision, an answer
        that is not the hub's (HTML, wrong JSON, endless).
    """
    what = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    for noisy in ("httpx2", "httpx", "httpcore"):  # one line per request at INFO: keep the bar readable
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    if offline_flag():
        raise hub_error(RuntimeError("offline"), what, hint)
    api = f"{endpoint()}/api/{repo_type}s/{repo_id}"
    try:
        info, _ = get_json(api + (f"/revision/{quote(revision, safe='')}" if revision else ""), what, timeout)
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise HubError(f"{what}: the hub did not say which commit it serves (expected a JSON object with a "
                           f"40-hex 'sha', got {_shape(info)})")
        files: list[RemoteFile] = []
        url, params = f"{api}/tree/{sha}", {"recursive": "true", "expand": "false"}
        for _ in range(MAX_TREE_PAGES):
            page, url = get_json(url, what, timeout, params)
            files += _tree_files(page, what)
            params = None  # the next page's URL carries them
            if not url:
                break
        else:
            raise HubError(f"{what}: the hub's file list goes on past {MAX_TREE_PAGES} pages; stopped reading")
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 — every failure becomes one line
        raise hub_error(e, what, hint) from None
    return Listing(repo_id, repo_type, revision or "main", sha, sorted(files, key=lambda f: f.path))


# ----------------------------------------------------------------------------------------------
# what is already there: checksums and huggingface_hub's local download records
# ----------------------------------------------------------------------------------------------
class _Record(NamedTuple):
    commit: str
    etag: str
    timestamp: float


def _record_path(root: Path, rel: str) -> Path:
    """Where huggingface_hub records a file it downloaded into ``root`` (``hf download --local-dir``,
    ``snapshot_download(local_dir=...)``; geosolver writes the same records)."""
    return root / ".cache" / "huggingface" / "download" / f"{rel}.metadata"


def _read_record(root: Path, rel: str) -> _Record | None:
    """The record (commit, checksum, time) of ``rel``, read without writing anything; ``None`` if absent or unreadable."""
    try:
        commit, etag, ts = _record_path(root, rel).read_text().splitlines()[:3]
        return _Record(commit.strip(), etag.strip(), float(ts))
    except (OSError, ValueError):
        return None


def _write_record(root: Path, rel: str, commit: str, etag: str) -> None:
    from huggingface_hub._local_folder import write_download_metadata  # the client's own record format

    write_download_metadata(root, rel, commit, etag)


def _file_matches(root: Path, f: RemoteFile, sha: str, record: bool) -> bool:
    """``root/f.path`` is ``f``: the listed size and the hub's checksum (from the record beside it while the
    file is unchanged since, else hashed — and recorded when ``record``)."""
    p = root / f.path
    try:
        st = p.stat()
    except OSError:
        return False
    if not p.is_file() or st.st_size != f.size:
        return False
    rec = _read_record(root, f.path)
    if rec is not None and st.st_mtime - 1 <= rec.timestamp:  # the file is the one recorded
        return rec.etag == f.etag if f.etag else rec.commit == sha
    if not f.etag:
        return True  # no checksum to compare: the size is all there is
    if file_checksum(p, f.etag) != f.etag:
        return False
    if record:
        _write_record(root, f.path, sha, f.etag)
    return True


# ----------------------------------------------------------------------------------------------
# transfers (hubhttp: GET / Range into a kept partial file, bounded, checked against the hub's checksum)
# ----------------------------------------------------------------------------------------------
def _resolve_url(listing: Listing, path: str) -> str:
    from huggingface_hub import hf_hub_url  # huggingface_hub: ~0.3 s, only when the hub is used

    return hf_hub_url(listing.repo_id, path, repo_type=listing.repo_type, revision=listing.sha)


@dataclass
class _Place:
    """Where a file's partial goes and what to do with it once complete (local folder or HF cache)."""

    partial: Callable[[RemoteFile], Path]
    finish: Callable[[RemoteFile, Path], Path]


def _fetch(listing: Listing, files: Sequence[RemoteFile], place: _Place, *, workers: int, progress: bool,
           desc: str, res: DownloadResult, on_done: Callable[[RemoteFile, Path], None] | None = None) -> None:
    """Fetch ``files`` (``workers`` at a time) with one bytes bar; on any failure or Ctrl-C the others stop
    and every partial file is kept for the next run."""
    lock, stop = threading.Lock(), threading.Event()
    bar = tqdm(total=res.bytes_to_fetch, initial=res.bytes_partial, unit="B", unit_scale=True, unit_divisor=1024,
               desc=desc, disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True, miniters=1)

    def counted(n: int) -> None:
        with lock:
            res.bytes_received += max(n, 0)
            bar.update(n)

    def one(f: RemoteFile) -> None:
        part = place.partial(f)
        fetch_file(_resolve_url(listing, f.path), f, part, counted, stop)
        dest = place.finish(f, part)
        if on_done is not None:
            on_done(f, dest)

    what = f"{listing.repo_type} {listing.repo_id}"
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(one, f) for f in files]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                stop.set()
                for fut in futures:
                    fut.cancel()
                raise
    except KeyboardInterrupt:
        log.warning("interrupted: %s received; the partial files are kept, run the same command again to resume",
                    human_bytes(res.bytes_received))
        raise
    except GeosolverError:
        raise
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, what, "Finished and partial files are kept; run the same command again to resume.") from None
    finally:
        bar.close()


def _plan(dest: Path, listing: Listing, selected: list[RemoteFile], present: list[str], dry_run: bool,
          partial: Callable[[RemoteFile], Path]) -> tuple[DownloadResult, list[RemoteFile]]:
    """What a download of ``selected`` into ``dest`` has to do: the result so far and the files still to
    fetch — the one list that ``--dry-run``, the progress total and the summary count."""
    todo = [f for f in selected if f.path not in present]
    res = DownloadResult(dest, listing.sha, selected, present=present, bytes_total=sum(f.size for f in selected),
                         bytes_to_fetch=sum(f.size for f in todo),
                         bytes_partial=sum(min(partial_size(partial(f)), f.size) for f in todo), dry_run=dry_run)
    return res, todo


def _local_place(root: Path, sha: str) -> _Place:
    """Files at ``root/<path>``, partials in ``root/.cache/huggingface/download/``, huggingface_hub's record written."""
    parts = root / ".cache" / "huggingface" / "download"

    def finish(f: RemoteFile, part: Path) -> Path:
        dest = root / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        _write_record(root, f.path, sha, f.etag)
        for stale in part.parent.glob(glob.escape(part.name.rsplit(".", 2)[0]) + ".*.partial"):  # older contents
            stale.unlink(missing_ok=True)
        return dest

    return _Place(lambda f: partial_path(parts, f.path, f.etag), finish)


# ----------------------------------------------------------------------------------------------
# OSV5M
# ----------------------------------------------------------------------------------------------
def _zip_key(path: str) -> tuple:
    stem = Path(path).stem
    return (int(stem), stem) if stem.isdigit() else (10**9, stem)


def osv5m_selection(listing: Listing, split: str = "test", shards: int | None = None) -> list[RemoteFile]:
    """The files of ``split`` (``test``, ``train`` or ``all``): the CSV, then the image zips in order
    (only the first ``shards`` of each split when given)."""
    if split not in (*OSV5M_SPLITS, "all"):
        raise HubError(f"unknown OSV5M split {split!r}; use test, train or all")
    chosen: list[RemoteFile] = []
    for s in (OSV5M_SPLITS if split == "all" else (split,)):
        csv = listing.get(f"{s}.csv")
        if csv is None:
            raise HubError(f"dataset {listing.repo_id}@{listing.sha[:12]}: no {s}.csv in the repository; "
                           f"its layout is not the one geosolver reads")
        zips = sorted((f for f in listing.files if re.fullmatch(rf"images/{s}/[^/]+\.zip", f.path)),
                      key=lambda f: _zip_key(f.path))
        if not zips:
            raise HubError(f"dataset {listing.repo_id}@{listing.sha[:12]}: no images/{s}/*.zip in the repository")
        chosen += [csv, *(zips[:shards] if shards else zips)]
    return chosen


def _extracted_dir(root: Path, rel: str) -> Path:
    p = root / rel
    return p.with_suffix("")  # images/test/00.zip -> images/test/00/


def _has_images(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def _is_extracted(root: Path, f: RemoteFile, sha: str, images: Callable[[Path], bool] = _has_images) -> bool:
    """``f`` (an image zip) was extracted and removed: by ``--extract`` (its marker, same size and checksum)
    or by the dataset authors' script (snapshot_download, each zip extracted into ``images/<split>/`` and
    deleted): the zip is gone, huggingface_hub's download record of it names this content, and the
    folder holds images."""
    marker = _extracted_dir(root, f.path) / EXTRACTED_MARKER
    if marker.is_file():
        try:
            m = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(m, dict) and m.get("size") == f.size and m.get("etag", f.etag) == f.etag
    if (root / f.path).exists():
        return False
    rec = _read_record(root, f.path)
    if rec is None or not (rec.etag == f.etag if f.etag else rec.commit == sha):
        return False
    return images((root / f.path).parent)


def extract_zip(zip_path: Path, sha: str = "", etag: str = "") -> Path:
    """Unpack ``.../NN.zip`` into ``.../NN/`` (via a temporary folder, so a killed extraction is redone),
    write the marker, remove the zip. Members with absolute paths or ``..`` are refused."""
    dest = zip_path.with_suffix("")
    tmp = zip_path.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    size = zip_path.stat().st_size
    try:
        with zipfile.ZipFile(zip_path) as z:
            for m in z.infolist():
                name = m.filename
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise HubError(f"{zip_path}: refusing member {name!r} (absolute path or '..')")
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HubError(f"{zip_path}: not a valid zip ({e}); delete it and run again") from None
    (tmp / EXTRACTED_MARKER).write_text(json.dumps({"zip": zip_path.name, "size": size, "commit": sha, "etag": etag}))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    zip_path.unlink()
    return dest


@contextlib.contextmanager
def _root_lock(root: Path):
    """One download per root at a time (so another run's temporary files are never taken for leftovers)."""
    import fcntl  # fcntl: POSIX only

    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubError(f"{root}: another `geosolver download` is writing here; wait for it to finish") from None
        yield
    finally:
        fh.close()


def _remove_partials(root: Path) -> tuple[int, int]:
    """Delete the ``*.incomplete`` files a killed huggingface_hub download (``hf download``, an older
    geosolver) left in ``ROOT/.cache/huggingface/download`` — process-unique, so never resumable —, and
    half-extracted folders; returns ``(files, bytes)`` removed. geosolver's own ``*.partial`` files stay."""
    freed = n = 0
    cache = root / ".cache" / "huggingface" / "download"
    if cache.is_dir():
        for p in cache.rglob("*.incomplete"):
            with contextlib.suppress(OSError):
                size = p.stat().st_size
                p.unlink()
                freed += size
                n += 1
    for p in root.glob("images/*/.*.extracting"):
        shutil.rmtree(p, ignore_errors=True)
    return n, freed


def download_osv5m(
    root: str | os.PathLike,
    split: str = "test",
    shards: int | None = None,
    extract: bool = False,
    dry_run: bool = False,
    revision: str | None = None,
    workers: int = 4,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    repo_id: str = OSV5M_REPO,
) -> DownloadResult:
    """Download OSV5M (``split``: ``test``, ``train`` or ``all``) into ``root`` in its published layout.

    Resumable and idempotent: files already complete are not fetched again (no request beyond the file
    list), a file the hub changed is (whatever its size), an interrupted file resumes from its partial
    bytes. ``shards``: only the first N image zips of each split. ``extract``: unpack each zip to
    ``images/<split>/NN/`` and remove it (the reader reads either).

    Raises:
        HubError: no network, hub errors, not enough disk space, another download running on ``root``.
    """
    root = Path(os.path.abspath(root))
    if shards is not None and shards < 1:
        raise HubError(f"--shards must be >= 1, got {shards}")
    hint = (f"Or download OSV5M on a machine with access (`geosolver download osv5m --root DIR`) and copy DIR "
            f"here; nothing was written to {root}.")
    listing = list_repo(repo_id, "dataset", revision, timeout=timeout, hint=hint)
    selected = osv5m_selection(listing, split, shards)
    place = _local_place(root, listing.sha)
    seen: dict[Path, bool] = {}

    def images(folder: Path) -> bool:  # one walk per split folder, not one per zip
        if folder not in seen:
            seen[folder] = _has_images(folder)
        return seen[folder]

    def present(f: RemoteFile) -> bool:
        return _file_matches(root, f, listing.sha, record=not dry_run) or (
            f.path.endswith(".zip") and _is_extracted(root, f, listing.sha, images))

    res, todo = _plan(root, listing, selected, [f.path for f in selected if present(f)], dry_run, place.partial)
    if dry_run:
        return res
    t0 = time.time()
    with _root_lock(root):
        res.removed_partials = _remove_partials(root)
        need = (res.bytes_to_fetch - res.bytes_partial) + (res.bytes_to_fetch if extract else 0)
        free = shutil.disk_usage(root).free
        if need > free:
            raise HubError(f"{root}: {human_bytes(need)} needed ({'download + extraction' if extract else 'download'}), "
                           f"only {human_bytes(free)} free; use --shards N to take fewer zips")
        ext_lock = threading.Lock()

        def done(f: RemoteFile, p: Path) -> None:
            if extract and f.path.endswith(".zip"):
                with ext_lock:
                    extract_zip(p, listing.sha, f.etag)
                    res.extracted.append(f.path)

        _fetch(listing, todo, place, workers=workers, progress=progress, desc=f"osv5m {split}", res=res, on_done=done)
        if extract:  # zips that were already downloaded (an earlier run without --extract)
            for f in selected:
                z = root / f.path
                if f.path.endswith(".zip") and z.is_file() and f.path not in res.extracted:
                    extract_zip(z, listing.sha, f.etag)
                    res.extracted.append(f.path)
    res.fetched = [f.path for f in todo]
    res.seconds = time.time() - t0
    return res


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
def model_repo_id(name: str) -> str:
    """The hub id of an encoder alias (``streetclip`` → ``geolocal/StreetCLIP``) or a hub id as given.

    Raises:
        HubError: an offline built-in encoder (nothing to download) or not of the form ``org/name``.
    """
    key = name.strip()
    target = ENCODER_ALIASES.get(key.lower(), key)
    if "/" not in target:
        raise HubError(f"model {name!r} is built in (no hub repository); nothing to download")
    if target.count("/") != 1 or target.startswith((".", "/", "~")):
        raise HubError(f"model {name!r}: expected an alias ({', '.join(sorted(ENCODER_ALIASES))}) or a hub id org/name")
    return target


def model_selection(listing: Listing) -> list[RemoteFile]:
    """The files needed to load the model with transformers: no TF/Flax/ONNX exports, and no
    ``*.bin`` weights when ``*.safetensors`` are there."""
    keep = [f for f in listing.files if not any(re.match(p, f.path) for p in MODEL_IGNORE)]
    if any(f.path.endswith(".safetensors") for f in keep):
        keep = [f for f in keep if not re.search(r"(pytorch_model.*\.bin|\.pt|\.pth)$", f.path)]
    return keep


def cached_model(repo_id: str, revision: str = "main") -> Path | None:
    """The complete cached snapshot of ``repo_id`` if there is one (no network)."""
    from huggingface_hub import snapshot_download  # huggingface_hub: ~0.3 s, only when the hub is used

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 — not cached (or incomplete)
        return None


def _cache_place(storage: Path, sha: str) -> _Place:
    """The HF cache layout: the file as ``blobs/<checksum>``, linked from ``snapshots/<commit>/<path>``
    (what ``from_pretrained`` and ``snapshot_download(local_files_only=True)`` read); partials in ``blobs/``."""

    def blob(f: RemoteFile) -> Path:
        return storage / "blobs" / (f.etag or hashlib.sha1(f"{sha}/{f.path}".encode()).hexdigest())

    def finish(f: RemoteFile, part: Path) -> Path:
        os.replace(part, blob(f))
        return _link_snapshot(storage, sha, f, blob(f))

    return _Place(lambda f: blob(f).with_name(blob(f).name + ".partial"), finish)


def _link_snapshot(storage: Path, sha: str, f: RemoteFile, blob: Path) -> Path:
    pointer = storage / "snapshots" / sha / f.path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # no symlinks on this file system: a copy, as huggingface_hub does
        shutil.copyfile(blob, pointer)
    return pointer


def download_model(
    name: str,
    local_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    dry_run: bool = False,
    workers: int = 4,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> DownloadResult:
    """Download a model snapshot into ``local_dir`` or the HF cache; ``result.path`` is what to pass as
    ``--model`` (a cached one also loads by its name with ``HF_HUB_OFFLINE=1``). Resumable and idempotent
    as :func:`download_osv5m`.

    Raises:
        HubError: see :func:`list_repo`; when the hub cannot be reached but the model is already in the
        cache, the cached snapshot is returned instead.
    """
    from huggingface_hub import constants  # huggingface_hub: ~0.3 s, only when the hub is used
    from huggingface_hub.file_download import repo_folder_name  # huggingface_hub: ~0.3 s, only when the hub is used

    repo_id = model_repo_id(name)
    hint = (f"Or run `geosolver download model {name} --local-dir DIR` on a machine with access and copy DIR here "
            f"(then pass --model DIR).")
    try:
        listing = list_repo(repo_id, "model", revision, timeout=timeout, hint=hint)
    except HubError:
        if local_dir is None and not dry_run and (cached := cached_model(repo_id, revision or "main")) is not None:
            log.warning("hub unreachable; using the cached snapshot %s", cached)
            return DownloadResult(cached, cached.name, [], present=["(cached)"])
        raise
    selected = model_selection(listing)
    if local_dir is not None:
        dest = Path(os.path.abspath(local_dir))
        place = _local_place(dest, listing.sha)
        present = [f.path for f in selected if _file_matches(dest, f, listing.sha, record=not dry_run)]
    else:
        storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        dest = storage / "snapshots" / listing.sha
        place = _cache_place(storage, listing.sha)
        # a blob of the same content (cached under an earlier commit of the repo) only needs its link
        present = [f.path for f in selected if (dest / f.path).is_file()
                   or (f.etag and partial_size(storage / "blobs" / f.etag) == f.size)]
    res, todo = _plan(dest, listing, selected, present, dry_run, place.partial)
    if dry_run:
        return res
    t0 = time.time()
    with _root_lock(dest if local_dir is not None else storage / "blobs"):
        if local_dir is not None:
            res.removed_partials = _remove_partials(dest)
        _fetch(listing, todo, place, workers=workers, progress=progress, desc=repo_id, res=res)
    if local_dir is None:
        for f in selected:  # files whose content was cached under an earlier commit
            if not (dest / f.path).is_file():
                _link_snapshot(storage, listing.sha, f, storage / "blobs" / f.etag)
        ref = storage / "refs" / listing.revision  # so `from_pretrained(repo_id)` finds it offline
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != listing.sha:
            ref.write_text(listing.sha)
    res.fetched = [f.path for f in todo]
    res.seconds = time.time() - t0
    return res


def ensure_model(name: str, progress: bool = True) -> str:
    """What to hand to :func:`geosolver.encoders.load_encoder` so it loads without the network:
    built-in encoders and local directories as given, hub models as their downloaded snapshot
    (from the cache when complete — no request —, else downloaded)."""
    key = name.strip()
    target = ENCODER_ALIASES.get(key.lower(), key)
    if "/" not in target or Path(key).expanduser().exists():
        return key
    repo_id = model_repo_id(key)
    cached = cached_model(repo_id)
    if cached is not None:
        return str(cached)
    return str(download_model(key, progress=progress).path)


def file_table(files: Iterable[RemoteFile], present: Iterable[str] = ()) -> str:
    """A plain-text listing: size, status, path."""
    have = set(present)
    lines = [f"{human_bytes(f.size):>11}  {'present' if f.path in have else 'to fetch':<8}  {f.path}" for f in files]
    return "\n".join(lines)
