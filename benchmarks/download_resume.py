"""Killed, interrupted and cut-off downloads resume; a hostile hub cannot drive memory up.

`geosolver download osv5m` runs in a subprocess against the local stand-in hub (tests/hubstub.py) serving
a miniature OSV5M whose ``images/test/00.zip`` is ``--size-mb`` MiB (a real zip: a stored member of random
bytes). Each row:

* ``SIGKILL`` / ``Ctrl-C``: the client is stopped once its partial file holds half the zip, then the
  same command runs again: where its Range request started, how many bytes the hub sent the second
  time, and whether the final file is byte-identical (sha256) to the hub's.
* ``cut``: the hub hangs up half-way through the zip; the same run asks again from the cut.
* ``endless listing`` / ``endless body``: the hub answers the file list (or the zip) with a chunked
  body that does not end (the stub stops after ``--endless-mb``): the client's exit code, its peak RSS,
  and how much the stub managed to send before the client hung up.

Run from the repo root::

    PYTHONPATH=src .venv/bin/python benchmarks/download_resume.py [--size-mb 256] [--endless-mb 2048]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hubstub import OSV5M_ID, HubStub, Repo, osv5m_repo  # noqa: E402

ZIP = "images/test/00.zip"
SRC = str(REPO / "src")  # --src: the geosolver the client runs (e.g. an older checkout, for a before/after)


def big_repo(size_mb: int) -> Repo:
    files = dict(osv5m_repo(n_test=6, n_train=6, n_zips=1).files)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        with zipfile.ZipFile(io.BytesIO(files[ZIP])) as small:
            for m in small.infolist():
                z.writestr(m, small.read(m))
        z.writestr(zipfile.ZipInfo("padding.bin", date_time=(2024, 1, 1, 0, 0, 0)), os.urandom(size_mb * 2**20))
    files[ZIP] = buf.getvalue()
    return Repo(files)


def client(hub: HubStub, root: Path, hf_home: Path, extra=()) -> subprocess.Popen:
    env = dict(os.environ, **hub.env(hf_home), PYTHONPATH=SRC)
    cmd = [sys.executable, "-m", "geosolver", "download", "osv5m", "--root", str(root), "--workers", "1",
           "--no-check", "--no-progress", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def partial_size(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / ".cache/huggingface/download").rglob("*.partial")) if root.exists() else 0


def peak_rss_mb(proc: subprocess.Popen) -> tuple[int, float]:
    import psutil

    ps, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss / 2**20)
        except psutil.Error:
            break
        time.sleep(0.01)
    proc.communicate()
    return proc.returncode, peak


def sent_for(hub: HubStub, path: str) -> int:
    """Bytes of the zip the hub was asked for, from the Range starts of its GETs (whole = size - start)."""
    size = len(hub.repos[("dataset", OSV5M_ID)].files[ZIP])
    return sum(size - (int(r[2][6:].split("-")[0]) if r[2] else 0) for r in hub.file_gets() if r[1].endswith(path))


def stop_case(hub: HubStub, work: Path, sig: signal.Signals, size: int) -> list:
    root, hf = work / f"osv-{sig.name}", work / f"hf-{sig.name}"
    hub.trickle[ZIP] = size / 4  # about 4 s for the zip: time to stop the client half-way
    proc = client(hub, root, hf)
    while partial_size(root) < size // 2 and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    proc.communicate(timeout=60)
    kept = partial_size(root)
    hub.trickle.clear()
    hub.reset_log()
    t0 = time.time()
    rc = client(hub, root, hf).wait()
    secs = time.time() - t0
    gets = [r for r in hub.file_gets() if r[1].endswith(ZIP)]
    start = int(gets[0][2][6:].split("-")[0]) if gets and gets[0][2] else 0
    same = hashlib.sha256((root / ZIP).read_bytes()).hexdigest() == hub.repos[("dataset", OSV5M_ID)].etags[ZIP]
    return [("SIGKILL" if sig == signal.SIGKILL else "Ctrl-C") + f" (exit {proc.returncode})", kept, start,
            sent_for(hub, ZIP), same, f"{secs:.1f}", rc]


def cut_case(hub: HubStub, work: Path, size: int) -> list:
    root = work / "osv-cut"
    hub.reset_log()
    hub.drop_once.add(ZIP)
    rc = client(hub, root, work / "hf-cut").wait()
    gets = [r for r in hub.file_gets() if r[1].endswith(ZIP)]
    start = int(gets[-1][2][6:].split("-")[0]) if gets and gets[-1][2] else 0
    same = hashlib.sha256((root / ZIP).read_bytes()).hexdigest() == hub.repos[("dataset", OSV5M_ID)].etags[ZIP]
    return ["cut at half (same run)", size // 2, start, size - start, same, "-", rc]


def endless_case(hub: HubStub, work: Path, where: str, label: str) -> list:
    hub.hostile.clear()
    hub.sent.clear()
    hub.hostile[where] = "endless-json" if "api" in where else "endless-body"
    proc = client(hub, work / f"osv-{label}", work / f"hf-{label}")
    rc, peak = peak_rss_mb(proc)
    hub.hostile.clear()
    return [label, rc, f"{peak:.0f}", f"{max(hub.sent.values(), default=0) / 2**20:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--endless-mb", type=int, default=2048)
    ap.add_argument("--src", default=SRC, help="the src/ folder of the geosolver to run as the client")
    ap.add_argument("--only-endless", action="store_true", help="only the endless-answer rows")
    args = ap.parse_args()
    globals()["SRC"] = os.path.abspath(args.src)
    repo = big_repo(args.size_mb)
    size = len(repo.files[ZIP])
    with tempfile.TemporaryDirectory() as tmp, HubStub({("dataset", OSV5M_ID): repo}) as hub:
        work = Path(tmp)
        hub.endless_limit = args.endless_mb * 2**20
        print(f"client: {SRC}; zip of {size:,} bytes ({size / 2**20:.0f} MiB); load average {os.getloadavg()[0]:.2f}")
        if not args.only_endless:
            rows = [stop_case(hub, work, signal.SIGKILL, size), stop_case(hub, work, signal.SIGINT, size),
                    cut_case(hub, work, size)]
            print("| stop | kept on disk | next Range start | zip bytes asked for again | sha256 identical | "
                  "resume run s | exit |")
            print("|---|---:|---:|---:|---|---:|---:|")
            for r in rows:
                print(f"| {r[0]} | {r[1]:,} | {r[2]:,} | {r[3]:,} | {r[4]} | {r[5]} | {r[6]} |")
        ends = [endless_case(hub, work, f"/api/datasets/{OSV5M_ID}/tree/", "endless listing"),
                endless_case(hub, work, f"/datasets/{OSV5M_ID}/resolve/", "endless body")]
        print(f"\nendless answers (the stub stops after {args.endless_mb} MiB):")
        print("| answer | exit | client peak RSS MiB | MiB the hub sent before the client hung up |")
        print("|---|---:|---:|---:|")
        for r in ends:
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")


if __name__ == "__main__":
    main()
