"""HTTP with the Hugging Face hub for :mod:`geosolver.hub`: bounded JSON answers and resumable,
checksum-verified file transfers, over huggingface_hub's own session, headers (token, user agent) and
error classes.

* :func:`get_json` reads at most :data:`MAX_JSON_BYTES` of an answer (and for at most
  :data:`JSON_DEADLINE_S` s); an HTML page, non-JSON or an endless answer is one :class:`HubError`.
* :func:`fetch_file` brings a kept ``.partial`` file to the listed size — GET, or ``Range: bytes=N-``
  from what is there, asked again after a dropped connection — reading at most the listed size and
  writing each network read at once (a SIGKILL loses nothing written), then checks the hub's checksum
  (sha256, or the git blob sha1 of a small non-LFS file); an answer whose ``X-Linked-Etag`` names another
  content than the listing is refused before a byte is written. Never the Xet path: see :mod:`geosolver.hub`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from geosolver.errors import GeosolverError

log = logging.getLogger("geosolver.hub")

#: Most bytes read from one JSON answer of the hub (repo info, one page of the file list).
MAX_JSON_BYTES = 64 * 2**20
#: Most bytes read from the body of an error answer (its message).
MAX_ERROR_BYTES = 64 * 2**10
#: Seconds one JSON answer may take, however slowly it trickles.
JSON_DEADLINE_S = 120.0
#: Attempts in a row that bring no byte before a transfer gives up (the partial file is kept).
TRANSFER_RETRIES = 5


class HubError(GeosolverError):
    """The hub cannot be reached, or a repository, revision or file is not there (one line, exit 2)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of the repository: path, size and the hub's checksum (sha256, or the git blob sha1 of a
    small non-LFS file; ``""`` when the hub gave none — then only the size is checked)."""

    path: str
    size: int
    etag: str = ""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def endpoint() -> str:
    """The hub endpoint the client uses (``HF_ENDPOINT``, default https://huggingface.co)."""
    from huggingface_hub import constants  # huggingface_hub: ~0.3 s, only when the hub is used

    return constants.ENDPOINT


def offline_flag() -> bool:
    from huggingface_hub import constants  # huggingface_hub: ~0.3 s, only when the hub is used

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def hub_error(e: BaseException, what: str, hint: str) -> HubError:
    """Map a ``huggingface_hub`` / HTTP failure to one :class:`HubError` line."""
    import httpx2  # httpx2: only when the hub is used
    from huggingface_hub.errors import (  # huggingface_hub: ~0.3 s, only when the hub is used
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, OfflineModeIsEnabled) or offline_flag():
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
    return HubError(f"{what}: {type(e).__name__}: {_first_line(e)}")


def _raise_for_status(r, body: bytes) -> None:
    """huggingface_hub's error mapping (repo / revision / entry not found, gated...) for a streamed
    answer of which only ``body`` (at most :data:`MAX_ERROR_BYTES`) was read."""
    import httpx2  # httpx2: only when the hub is used
    from huggingface_hub.utils import hf_raise_for_status  # huggingface_hub: ~0.3 s, only when the hub is used

    if r.status_code < 400:
        return
    framing = ("content-encoding", "content-length", "transfer-encoding")  # of the streamed body, not of ``body``
    headers = [(k, v) for k, v in r.headers.items() if k.lower() not in framing]
    hf_raise_for_status(httpx2.Response(r.status_code, headers=headers, content=body, request=r.request))


def _read_capped(r, cap: int, deadline: float, what: str, strict: bool = True) -> bytes:
    """At most ``cap`` bytes of ``r``'s body; more (``strict``) or past ``deadline`` is a :class:`HubError`."""
    buf = bytearray()
    for chunk in r.iter_bytes(64 * 1024):
        buf += chunk
        if len(buf) > cap:
            if not strict:
                return bytes(buf[:cap])
            raise HubError(f"{what}: {r.url} sent more than {human_bytes(cap)} and was still sending, where the hub "
                           f"answers a short JSON; stopped reading. Is HF_ENDPOINT (or the proxy) a Hugging Face hub?")
        if time.monotonic() > deadline:
            raise HubError(f"{what}: {r.url} was still sending after {JSON_DEADLINE_S:.0f} s ({human_bytes(len(buf))}); "
                           f"stopped reading. Is HF_ENDPOINT (or the proxy) a Hugging Face hub?")
    return bytes(buf)


def get_json(url: str, what: str, timeout: float, params: dict | None = None):
    """``(parsed JSON, next page URL or None)`` of one GET, read with a byte cap and a deadline."""
    from huggingface_hub.utils import build_hf_headers, get_session  # huggingface_hub: ~0.3 s, only when the hub is used

    deadline = time.monotonic() + max(JSON_DEADLINE_S, timeout)
    with get_session().stream("GET", url, params=params, headers=build_hf_headers(), timeout=timeout,
                              follow_redirects=True) as r:
        ok = r.status_code < 400
        body = _read_capped(r, MAX_JSON_BYTES if ok else MAX_ERROR_BYTES, deadline, what, strict=ok)
        _raise_for_status(r, body)
        ctype = r.headers.get("Content-Type", "")
        next_url = r.links.get("next", {}).get("url")
    try:
        return json.loads(body), next_url
    except ValueError:
        head = body[:2048].lower()
        kind = ("an HTML page" if "html" in ctype.lower() or b"<html" in head or b"<!doctype" in head
                else f"{human_bytes(len(body))} of {ctype or 'untyped data'} that is not JSON")
        raise HubError(f"{what}: {url} answered {kind} where the hub answers JSON; check HF_ENDPOINT and the proxy "
                       f"(a login or error page?)") from None


def file_checksum(path: Path, etag: str) -> str:
    """``path``'s checksum in the form of the hub's ``etag``: sha256 (64 hex) or git blob sha1 (40 hex)."""
    if len(etag) == 40:
        h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def partial_path(parts_dir: Path, name: str, etag: str) -> Path:
    """Where the bytes of file ``name`` collect until it is complete: one per content (the checksum is in
    the name, so a changed file never resumes from the bytes of its old content)."""
    return parts_dir / f"{name}.{etag[:16] or 'nosum'}.partial"


def partial_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


class Stopped(Exception):
    """Another file failed or the run was interrupted: this transfer stops, its partial file is kept."""


def _pull(url: str, f: RemoteFile, partial: Path, on_bytes: Callable[[int], None], stop: threading.Event) -> None:
    """Bring ``partial`` to ``f.size`` bytes: GET, or ``Range: bytes=N-`` from what is there; a dropped or
    stalled connection is asked again from where the file ends (:data:`TRANSFER_RETRIES` tries in a row
    without a byte). Reads at most ``f.size`` bytes in all, each network read written to disk at once."""
    import httpx2  # httpx2: only when the hub is used
    from huggingface_hub import constants  # huggingface_hub: ~0.3 s, only when the hub is used
    from huggingface_hub.utils import build_hf_headers, get_session  # huggingface_hub: ~0.3 s, only when the hub is used

    fails, last = 0, ""
    while (have := partial_size(partial)) < f.size or not partial.exists():
        if stop.is_set():
            raise Stopped
        headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        got = 0
        try:
            with get_session().stream("GET", url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                      follow_redirects=True) as r:
                if r.status_code >= 400:
                    body = _read_capped(r, MAX_ERROR_BYTES, time.monotonic() + JSON_DEADLINE_S, f.path, strict=False)
                    if r.status_code in (408, 429) or r.status_code >= 500:
                        raise httpx2.TransportError(f"HTTP {r.status_code}")  # transient: ask again
                    if r.status_code == 416:  # the partial is not a prefix of what the hub serves
                        partial.unlink(missing_ok=True)
                        raise HubError(f"{f.path}: the hub cannot send bytes {have}- of this file (416); the partial "
                                       f"file was removed: run the same command again to fetch the file whole")
                    _raise_for_status(r, body)
                if have and r.status_code == 200:  # the server ignored the Range: start over
                    on_bytes(-have)
                    have = 0
                elif have:  # 206 from where it was asked, or from earlier (RFC 9110 allows it: block-aligned caches)
                    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                    if r.status_code != 206 or m is None or int(m.group(1)) > have:
                        partial.unlink()
                        raise HubError(f"{f.path}: asked for bytes {have}- and got status {r.status_code} with "
                                       f"Content-Range {r.headers.get('Content-Range')!r}; the partial file was removed: "
                                       f"run the same command again to fetch the file whole")
                    on_bytes(int(m.group(1)) - have)
                    have = int(m.group(1))
                linked = next((h.headers["X-Linked-Etag"] for h in (*r.history, r) if "X-Linked-Etag" in h.headers), "")
                linked = linked.removeprefix("W/").strip('"')
                if f.etag and len(linked) == len(f.etag) and linked != f.etag:  # before any byte is written
                    raise HubError(f"{f.path}: the hub serves content {linked[:16]}… (X-Linked-Etag) but its file list "
                                   f"says {f.etag[:16]}…; run the same command again (the repository may be changing)")
                total = r.headers.get("Content-Range", "").rpartition("/")[2] or (
                    "" if have else r.headers.get("Content-Length", ""))
                if total.isdigit() and int(total) != f.size:
                    raise HubError(f"{f.path}: the hub serves {int(total):,} bytes for this file but its file list says "
                                   f"{f.size:,}; run the same command again (the repository may be changing)")
                with open(partial, "r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    for chunk in r.iter_bytes():  # as the network delivers (≤ 64 KiB): all of it reaches the file
                        if have + got + len(chunk) > f.size:
                            raise HubError(f"{f.path}: the hub sent more than the {f.size:,} bytes its file list gives "
                                           f"this file; stopped reading")
                        out.write(chunk)
                        got += len(chunk)
                        on_bytes(len(chunk))
                        if stop.is_set():
                            raise Stopped
        except httpx2.TransportError as e:  # dropped, reset, timed out, 5xx: ask again from where the file ends
            last = f"{type(e).__name__}: {_first_line(e)}"
        if partial_size(partial) >= f.size:
            return
        fails = 0 if got else fails + 1
        if fails >= TRANSFER_RETRIES:
            raise HubError(f"{f.path}: the transfer stopped at {partial_size(partial):,} of {f.size:,} bytes "
                           f"{TRANSFER_RETRIES} times in a row ({last or 'short answer'}); the partial file is kept: "
                           f"run the same command again to resume")
        log.info("%s: transfer cut at %d of %d bytes (%s); resuming", f.path, partial_size(partial), f.size,
                 last or "short answer")
        time.sleep(min(8.0, 0.5 * 2**fails) if not got else 0.2)


def fetch_file(url: str, f: RemoteFile, partial: Path, on_bytes: Callable[[int], None], stop: threading.Event) -> None:
    """``partial`` complete and equal to the hub's file (checksum), resuming what is there; a resumed file
    that does not match is fetched once more from byte 0."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (0, 1):
        resumed = partial_size(partial)
        _pull(url, f, partial, on_bytes, stop)
        if not f.etag or file_checksum(partial, f.etag) == f.etag:
            return
        partial.unlink()
        on_bytes(-f.size)
        if attempt or not resumed:
            raise HubError(f"{f.path}: the downloaded bytes do not match the hub's checksum {f.etag[:16]}…; the "
                           f"partial file was removed: run the same command again")
        log.warning("%s: the resumed file does not match the hub's checksum; fetching it again from byte 0", f.path)


