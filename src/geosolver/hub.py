"""Downloads from the Hugging Face hub through ``huggingface_hub`` (the ecosystem's own client).

* :func:`download_osv5m` — the dataset repo ``osv5m/osv5m`` in its published layout
  (``test.csv``, ``train.csv``, ``images/<split>/NN.zip``) into a root that
  ``geosolver.data.read_dataset("osv5m", root, split=...)`` reads as it is (zips read in place), or
  with ``extract=True`` each zip unpacked to ``images/<split>/NN/`` and removed.
* :func:`download_model` — a model snapshot (an alias of :data:`geosolver.encoders.ENCODER_ALIASES`
  or any hub id) into the HF cache or a directory, so later runs work with ``HF_HUB_OFFLINE=1``.

How it works: one ``repo_info`` (short timeout: no network fails in seconds with one line saying what
to do) gives the commit; ``list_repo_tree`` gives every file with its size (``--dry-run`` prints it);
then each selected file goes through ``hf_hub_download(revision=<commit>, local_dir=ROOT)``:
a file already there with the same commit is returned without a request, so a second run fetches
nothing; a dropped connection is resumed with an HTTP Range request inside the client. A process that
is *killed* restarts the file it was fetching from zero (huggingface_hub 2.4 downloads into a
process-unique temporary file), files already finished are kept — resume is per file. Leftover
temporary files of killed runs are removed at the next start (runs on one root are serialised by a
lock). One progress bar counts bytes of the whole download with rate and ETA.

Every failure is a :class:`HubError` (a :class:`~geosolver.errors.GeosolverError`): one line, exit 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from geosolver.errors import GeosolverError

log = logging.getLogger("geosolver.hub")

OSV5M_REPO = "osv5m/osv5m"
OSV5M_SPLITS = ("test", "train")
#: Seconds to wait for the hub's first answer before saying it cannot be reached.
DEFAULT_TIMEOUT_S = 10.0
#: Written into ``images/<split>/NN/`` when ``NN.zip`` was extracted (and removed).
EXTRACTED_MARKER = ".geosolver-extracted.json"
LOCK_NAME = ".geosolver-download.lock"
#: Model files never needed to load a CLIP with transformers/torch.
MODEL_IGNORE = (
    r".*\.h5$", r".*\.msgpack$", r".*\.onnx(_data)?$", r".*\.ot$", r".*\.tflite$", r".*\.mlmodel$", r".*\.gguf$",
    r"^(onnx|coreml|openvino|tf|flax)/.*", r"^\.gitattributes$",
)


class HubError(GeosolverError):
    """The hub cannot be reached, or a repository, revision or file is not there (one line, exit 2)."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


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
    bytes_to_fetch: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    removed_partials: tuple[int, int] = (0, 0)  # (files, bytes) left by a killed run, removed


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------------------------
# talking to the hub
# ----------------------------------------------------------------------------------------------
def endpoint() -> str:
    """The hub endpoint the client uses (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_flag() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _hub_error(e: BaseException, what: str, hint: str) -> HubError:
    """Map a ``huggingface_hub`` / HTTP failure to one :class:`HubError` line."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, OfflineModeIsEnabled) or _offline_flag():
        return HubError(f"{what}: HF_HUB_OFFLINE=1 is set, so nothing can be downloaded; unset it (or set "
                        f"HF_HUB_OFFLINE=0) on a machine that can reach {endpoint()}. {hint}")
    if isinstance(e, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, ConnectionError)):
        return HubError(f"{what}: cannot reach the Hugging Face hub at {endpoint()} ({type(e).__name__}: "
                        f"{_first_line(e)}). Check the network / proxy (HTTPS_PROXY) or point HF_ENDPOINT at a "
                        f"mirror, then run the same command again. {hint}")
    if isinstance(e, GatedRepoError):
        return HubError(f"{what}: the repository is gated: accept its terms on the hub and log in (`hf auth login` "
                        f"or HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{what}: no such revision on the hub ({_first_line(e)})")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{what}: no such repository on the hub (or it is private: log in with `hf auth login` "
                        f"or set HF_TOKEN)")
    if isinstance(e, RemoteEntryNotFoundError):
        return HubError(f"{what}: a file listed by the hub is missing ({_first_line(e)}); run again later")
    if isinstance(e, HfHubHTTPError):
        return HubError(f"{what}: the hub answered an error: {_first_line(e)}")
    if isinstance(e, OSError):
        return HubError(f"{what}: {type(e).__name__}: {_first_line(e)}")
    return HubError(f"{what}: {type(e).__name__}: {_first_line(e)}")


def list_repo(repo_id: str, repo_type: str = "model", revision: str | None = None,
              timeout: float = DEFAULT_TIMEOUT_S, hint: str = "") -> Listing:
    """The repository's commit and every file with its size, from the hub's own file list.

    Raises:
        HubError: offline, unreachable (after at most ``timeout`` s), no such repo / revision.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    what = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    for noisy in ("httpx2", "httpx", "httpcore"):  # one line per request at INFO: keep the bar readable
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    if _offline_flag():
        raise _hub_error(RuntimeError("offline"), what, hint)
    api = HfApi()
    try:
        info = api.repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=timeout)
        sha = info.sha
        files = [RemoteFile(f.path, int(f.size or 0))
                 for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=sha, recursive=True)
                 if isinstance(f, RepoFile)]
    except Exception as e:  # noqa: BLE001 — every failure becomes one line
        raise _hub_error(e, what, hint) from None
    if not sha:
        raise HubError(f"{what}: the hub did not say which commit it serves")
    return Listing(repo_id, repo_type, revision or "main", sha, sorted(files, key=lambda f: f.path))


def _forwarding_tqdm(bar, lock: threading.Lock):
    """A tqdm stand-in for ``hf_hub_download(tqdm_class=...)`` that adds each file's bytes to ``bar``."""

    class _Forward:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            if n:
                with lock:
                    bar.update(n)

        def close(self):
            pass

        def __getattr__(self, name):  # set_postfix_str, update_transfer, refresh, ...
            return lambda *a, **k: None

    return _Forward


def _fetch(listing: Listing, files: Sequence[RemoteFile], *, local_dir: Path | None, cache_dir: str | None,
           workers: int, progress: bool, desc: str, on_done=None, total: int | None = None) -> list[str]:
    """``hf_hub_download`` every file (pinned to the listing's commit) with one bytes bar; returns the paths."""
    from huggingface_hub import hf_hub_download
    from geosolver.progress import tqdm

    total = sum(f.size for f in files) if total is None else total  # bytes expected to move
    lock = threading.Lock()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress,
               dynamic_ncols=True, miniters=1)
    fwd = _forwarding_tqdm(bar, lock)

    def one(f: RemoteFile) -> str:
        p = hf_hub_download(listing.repo_id, f.path, repo_type=listing.repo_type, revision=listing.sha,
                            local_dir=str(local_dir) if local_dir is not None else None, cache_dir=cache_dir,
                            tqdm_class=fwd)
        if on_done is not None:
            on_done(f, Path(p))
        return p

    what = f"{listing.repo_type} {listing.repo_id}"
    out: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(one, f) for f in files]
            try:
                for fut in futures:
                    out.append(fut.result())
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    except GeosolverError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, what, "Files already finished are kept; run the same command again to resume.") from None
    finally:
        bar.close()
    return out


def _plan(dest: Path, listing: Listing, selected: list[RemoteFile], present: list[str],
          dry_run: bool) -> tuple[DownloadResult, list[RemoteFile]]:
    """What a download of ``selected`` into ``dest`` has to do: the result so far and the files still to fetch."""
    todo = [f for f in selected if f.path not in present]
    res = DownloadResult(dest, listing.sha, selected, present=present, bytes_total=sum(f.size for f in selected),
                         bytes_to_fetch=sum(f.size for f in todo), dry_run=dry_run)
    return res, todo


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


def _is_extracted(root: Path, f: RemoteFile) -> bool:
    marker = _extracted_dir(root, f.path) / EXTRACTED_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("size") == f.size
    except (OSError, ValueError):
        return False


def _is_present(root: Path, f: RemoteFile) -> bool:
    p = root / f.path
    return (p.is_file() and p.stat().st_size == f.size) or (f.path.endswith(".zip") and _is_extracted(root, f))


def extract_zip(zip_path: Path, sha: str = "") -> Path:
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
    (tmp / EXTRACTED_MARKER).write_text(json.dumps({"zip": zip_path.name, "size": size, "commit": sha}))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    zip_path.unlink()
    return dest


@contextlib.contextmanager
def _root_lock(root: Path):
    """One download per root at a time (so another run's temporary files are never taken for leftovers)."""
    import fcntl

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
    """Delete ``*.incomplete`` files killed runs left in ``ROOT/.cache/huggingface/download``; returns
    ``(files, bytes)`` removed."""
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

    Resumable and idempotent: files already complete are not fetched again (no request at all when the
    hub still serves the same commit). ``shards``: only the first N image zips of each split.
    ``extract``: unpack each zip to ``images/<split>/NN/`` and remove it (the reader reads either).

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
    res, todo = _plan(root, listing, selected, [f.path for f in selected if _is_present(root, f)], dry_run)
    if dry_run:
        return res
    t0 = time.time()
    with _root_lock(root):
        res.removed_partials = _remove_partials(root)
        need = res.bytes_to_fetch * (2 if extract else 1)
        free = shutil.disk_usage(root).free
        if need > free:
            raise HubError(f"{root}: {human_bytes(need)} needed ({'download + extraction' if extract else 'download'}), "
                           f"only {human_bytes(free)} free; use --shards N to take fewer zips")
        ext_lock = threading.Lock()

        def done(f: RemoteFile, p: Path) -> None:
            if extract and f.path.endswith(".zip"):
                with ext_lock:
                    extract_zip(p, listing.sha)
                    res.extracted.append(f.path)

        # Every selected file goes through the client (a present one costs no request at this commit),
        # so a file changed on the hub since the last run is fetched again.
        kept = [f for f in selected if not (f.path.endswith(".zip") and _is_extracted(root, f))]
        _fetch(listing, kept, local_dir=root, cache_dir=None, workers=workers, progress=progress,
               desc=f"osv5m {split}", on_done=done, total=res.bytes_to_fetch)
        if extract:  # zips that were already downloaded (an earlier run without --extract)
            for f in selected:
                z = root / f.path
                if f.path.endswith(".zip") and z.is_file() and f.path not in res.extracted:
                    extract_zip(z, listing.sha)
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
    from geosolver.encoders import ENCODER_ALIASES

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
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 — not cached (or incomplete)
        return None


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
    ``--model`` (a cached one also loads by its name with ``HF_HUB_OFFLINE=1``).

    Raises:
        HubError: see :func:`list_repo`; when the hub cannot be reached but the model is already in the
        cache, the cached snapshot is returned instead.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

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
        present = [f.path for f in selected if _is_present(dest, f)]
    else:
        storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        dest = storage / "snapshots" / listing.sha
        present = [f.path for f in selected if (dest / f.path).is_file()]
    res, todo = _plan(dest, listing, selected, present, dry_run)
    if dry_run:
        return res
    t0 = time.time()
    if local_dir is not None:
        with _root_lock(dest):
            res.removed_partials = _remove_partials(dest)
            _fetch(listing, selected, local_dir=dest, cache_dir=None, workers=workers, progress=progress, desc=repo_id,
                   total=res.bytes_to_fetch)
    else:
        _fetch(listing, selected, local_dir=None, cache_dir=constants.HF_HUB_CACHE, workers=workers,
               progress=progress, desc=repo_id, total=res.bytes_to_fetch)
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
    from geosolver.encoders import ENCODER_ALIASES

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
