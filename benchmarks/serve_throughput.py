"""Throughput of `geosolver serve` against the same model in-process: small photos, concurrency 4.

The real server (``python -m geosolver serve``, uvicorn on 127.0.0.1, a free port) runs in a
subprocess with the ``histogram`` encoder (no download) over a generated gallery; ``--concurrency``
client threads, each with its own keep-alive ``httpx.Client``, post small JPEGs to ``/api/locate``
(multipart, as the page sends them) until ``--requests`` answers or ``--seconds`` have passed. The
in-process rate is ``Geolocator.locate(photo_bytes)`` one photo at a time in this process, measured
before and after the server run (the mean is the reference). Printed: answers/s, p50 and p99 latency,
the in-process rate, their ratio, the server process's CPU time per answer (user + system: less
sensitive than the rates to what else the machine runs), and ``uptime``'s load average.

Target (issue 23): ratio >= 0.5 at concurrency 4, p99 < 50 ms.

``--baseline-src DIR`` also serves from another source tree (e.g. ``git archive OLD src | tar -x -C
DIR``), alternating the two servers ``--rounds`` times, so a before/after comparison is one
interleaved run under the same load.

Run from the repo root::

    PYTHONPATH=src .venv/bin/python benchmarks/serve_throughput.py [--requests 3000] [--seconds 30] [--gallery 2000] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_memory import Server  # noqa: E402  (a sibling benchmark script: the server subprocess)


def photos(n: int, seed: int = 1) -> list[bytes]:
    """``n`` small distinct JPEGs (64x48 blocks of random colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((64, 48), Image.NEAREST).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def gallery(root: Path, n: int) -> Path:
    """An ``n``-photo gallery store embedded with the ``histogram`` encoder at random places."""
    import pandas as pd

    from geosolver.encoders import load_encoder
    from geosolver.store import write_store

    enc = load_encoder("histogram", device="cpu")
    rng = np.random.default_rng(0)
    emb = enc.embed_images(photos(n, seed=2))
    meta = pd.DataFrame({"id": [f"g{i:05d}" for i in range(n)], "lat": rng.uniform(-60, 70, n), "lon": rng.uniform(-180, 180, n)})
    store = root / "gallery"
    write_store(store, emb, meta, encoder=enc.identity())
    return store


def in_process_rate(store: Path, data: list[bytes], seconds: float) -> float:
    """Photos/s of ``Geolocator.locate(bytes)``, one photo at a time, for about ``seconds``."""
    from geosolver.locate import Geolocator

    geo = Geolocator.from_store(store, encoder="histogram", device="cpu")
    geo.locate(data[0])  # warm: index, encoder, geocoder
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        geo.locate(data[n % len(data)])
        n += 1
    return n / (time.perf_counter() - t0)


def fire(base: str, data: list[bytes], concurrency: int, requests: int, seconds: float) -> tuple[int, int, float, np.ndarray]:
    """``requests`` uploads from ``concurrency`` threads (stopping after ``seconds``):
    ``(answered 200, other statuses, wall seconds, latencies in s)``."""
    import httpx

    lock = threading.Lock()
    state = {"next": 0, "bad": 0}
    lat: list[float] = []
    deadline = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.perf_counter() < deadline:
                with lock:
                    i = state["next"]
                    if i >= requests:
                        return
                    state["next"] += 1
                t = time.perf_counter()
                r = c.post("/api/locate", files={"file": (f"p{i}.jpg", data[i % len(data)], "image/jpeg")})
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        state["bad"] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), state["bad"], time.perf_counter() - t0, np.asarray(lat)


def serve_run(store: Path, data: list[bytes], args, src: str | None) -> dict:
    """One server (from ``src``'s ``geosolver`` package, default this one's), warmed, then measured."""
    saved = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = str(Path(src).resolve() / "src")
    try:
        server = Server(store, [])
    finally:
        if src:
            os.environ["PYTHONPATH"] = saved or ""
    try:
        fire(server.base, data, args.concurrency, 50, 10.0)  # warm the connections and the threadpool
        cpu0 = sum(server.ps.cpu_times()[:2])
        ok, bad, wall, lat = fire(server.base, data, args.concurrency, args.requests, args.seconds)
        cpu = sum(server.ps.cpu_times()[:2]) - cpu0
    finally:
        server.close()
    p50, p99 = (np.percentile(lat, [50, 99]) * 1e3) if lat.size else (float("nan"), float("nan"))
    return {"ok": ok, "bad": bad, "wall": wall, "rate": ok / wall if wall > 0 else 0.0, "p50": p50, "p99": p99,
            "cpu_ms": cpu / max(ok, 1) * 1e3}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="uploads to send (default 3000)")
    ap.add_argument("--seconds", type=float, default=30.0, help="stop sending after this long (default 30)")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--gallery", type=int, default=2000, help="gallery photos (default 2000)")
    ap.add_argument("--in-process-seconds", type=float, default=5.0, help="length of each in-process measurement (default 5)")
    ap.add_argument("--baseline-src", default=None, help="also serve from this source tree (its src/), interleaved")
    ap.add_argument("--rounds", type=int, default=1, help="server runs per tree (default 1)")
    args = ap.parse_args(argv)

    data = photos(64)
    trees = [("this tree", None)] + ([("baseline", args.baseline_src)] if args.baseline_src else [])
    runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="serve_throughput_") as tmp:
        store = gallery(Path(tmp), args.gallery)
        refs = [in_process_rate(store, data, args.in_process_seconds)]
        for _ in range(args.rounds):
            for name, src in (trees if len(runs["this tree"]) % 2 == 0 else trees[::-1]):
                runs[name].append(serve_run(store, data, args, src))
        refs.append(in_process_rate(store, data, args.in_process_seconds))
    load = uptime()
    ref = float(np.mean(refs))
    print(f"gallery {args.gallery} (histogram), {len(data)} distinct 64x48 JPEGs, concurrency {args.concurrency}, "
          f"up to {args.requests} requests or {args.seconds:g} s per run, {args.rounds} run(s) per tree")
    print(f"{'server':<10} {'served/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'in-process/s':>13} {'ratio':>6} {'server CPU ms/answer':>21}  answered / not 200")
    met = True
    for name, _ in trees:
        r = runs[name]
        rate, p50, p99 = float(np.mean([x["rate"] for x in r])), float(np.mean([x["p50"] for x in r])), float(np.mean([x["p99"] for x in r]))
        cpu = float(np.mean([x["cpu_ms"] for x in r]))
        print(f"{name:<10} {rate:>9.0f} {p50:>7.1f} {p99:>7.1f} {ref:>13.0f} {rate / ref:>6.2f} {cpu:>21.2f}  "
              f"{sum(x['ok'] for x in r)} / {sum(x['bad'] for x in r)}")
        if name == "this tree":
            met = rate / ref >= 0.5 and p99 < 50
    print(f"in-process (Geolocator.locate, one photo at a time) before/after the servers: {refs[0]:.0f}/{refs[1]:.0f} per s")
    print(f"load: {load}")
    print(f"target for this tree (ratio >= 0.5, p99 < 50 ms): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
