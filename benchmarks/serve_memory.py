"""Memory of `geosolver serve` under pixel bombs: peak RSS of the server process while several
clients upload, at once, a small PNG that declares a huge image.

The bomb is a real, valid 13000x13000 RGB PNG of ~0.5 MB (169 Mpx: just under the global guard
``geosolver.images.MAX_PIXELS`` = 180 M, so only the server's own ``--max-pixels`` budget stops it;
fully decoded it is 0.5 GB of RGB). The server runs in a subprocess on 127.0.0.1 (a free port) over
a tiny gallery embedded with the ``histogram`` encoder (no download); its RSS is sampled every 5 ms
with psutil. Each case prints: requests, status codes, RSS before, peak and after, growth of the peak.

Cases:

* ``bomb``: ``--requests`` concurrent bomb uploads against the default server (target: each gets
  a 4xx, peak growth < 1 GB).
* ``near-limit``: the same number of concurrent PNGs of 6000x6000 = 36 Mpx (under the default
  40 Mpx budget): accepted, decoded at most ``--max-decodes`` at a time.
* ``bomb, unguarded`` (with ``--unguarded``): the bombs against a server started with
  ``--max-pixels 180000000 --max-decodes 64`` -- what the server did before it had a budget.

Run from the repo root::

    .venv/bin/python benchmarks/serve_memory.py [--requests 4] [--unguarded]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def flat_png(width: int, height: int, colour: tuple[int, int, int] = (90, 140, 200)) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` pixels of one colour, compressed row by row (no
    full image is ever held in memory): a 13000x13000 one is ~0.5 MB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" + bytes(colour) * width  # filter type 0 + pixels
    z = zlib.compressobj(9)
    parts = [z.compress(row) for _ in range(height)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def small_gallery(root: Path) -> Path:
    """A 32-photo gallery store embedded with the ``histogram`` encoder."""
    import pandas as pd
    from PIL import Image

    from geosolver.encoders import load_encoder
    from geosolver.store import write_store

    enc = load_encoder("histogram", device="cpu")
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(32):
        buf = io.BytesIO()
        Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((64, 48), Image.NEAREST).save(buf, format="PNG")
        imgs.append(buf.getvalue())
    emb = enc.embed_images(imgs)
    meta = pd.DataFrame({"id": [f"g{i:03d}" for i in range(32)], "lat": rng.uniform(36, 60, 32), "lon": rng.uniform(-9, 30, 32)})
    store = root / "gallery"
    write_store(store, emb, meta, encoder=enc.identity())
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`geosolver serve` in a subprocess; ``rss_mb()`` samples its resident memory."""

    def __init__(self, store: Path, extra: list[str]):
        import psutil

        self.port = free_port()
        cmd = [sys.executable, "-m", "geosolver", "serve", "--gallery", str(store), "--model", "histogram", "--device", "cpu",
               "--port", str(self.port), *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.ps = psutil.Process(self.proc.pid)
        self.base = f"http://127.0.0.1:{self.port}"
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {''.join(self.stderr_lines[-20:])}")
            try:
                if httpx.get(f"{self.base}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("server did not start within 120 s")

    def _drain(self) -> None:
        for line in self.proc.stderr:  # keep the pipe from filling up
            self.stderr_lines.append(line.decode("utf-8", "replace"))

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_case(server: Server, name: str, data: bytes, filename: str, n: int, settle_s: float = 1.0) -> dict:
    """``n`` concurrent uploads of ``data``; RSS sampled every 5 ms from before the first to ``settle_s``
    after the last answer."""
    import httpx

    time.sleep(settle_s)
    before = server.rss_mb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], server.rss_mb())
            except Exception:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(_):
        try:
            r = httpx.post(f"{server.base}/api/locate", files={"file": (filename, data, "image/png")}, timeout=300)
            return r.status_code, r.json().get("detail")
        except Exception as e:  # a dead server or a timeout is a result too
            return type(e).__name__, str(e)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))
    wall = time.perf_counter() - t0
    time.sleep(settle_s)
    stop.set()
    sampler.join()
    after = server.rss_mb()
    details = sorted({d for _, d in results if isinstance(d, str)})
    return {"case": name, "requests": n, "status": ",".join(str(s) for s, _ in results), "before": before, "peak": peak[0],
            "after": after, "growth": peak[0] - before, "wall_s": wall, "detail": details[0] if details else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=4, help="concurrent uploads per case (default 4)")
    ap.add_argument("--side", type=int, default=13000, help="bomb side in pixels (default 13000: 169 Mpx)")
    ap.add_argument("--unguarded", action="store_true", help="also run the bombs against a server without a pixel budget")
    ap.add_argument("--unguarded-requests", type=int, default=None, help="concurrent uploads for the unguarded case (default --requests)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    bomb = flat_png(args.side, args.side)
    near = flat_png(6000, 6000, (200, 120, 60))
    print(f"bomb: {args.side}x{args.side} PNG = {args.side ** 2 / 1e6:.0f} Mpx in {len(bomb) / 1e6:.2f} MB; "
          f"near-limit: 6000x6000 PNG = 36 Mpx in {len(near) / 1e6:.2f} MB (built in {time.perf_counter() - t0:.1f} s)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve_memory_") as tmp:
        store = small_gallery(Path(tmp))
        configs = [("default", [], [("bomb", bomb, "bomb.png", args.requests), ("near-limit 36 Mpx", near, "near.png", args.requests)])]
        if args.unguarded:
            configs.append(("--max-pixels 180000000 --max-decodes 64", ["--max-pixels", "180000000", "--max-decodes", "64"],
                            [("bomb, unguarded", bomb, "bomb.png", args.unguarded_requests or args.requests)]))
        for label, extra, cases in configs:
            server = Server(store, extra)
            try:
                for name, data, fname, n in cases:
                    rows.append(run_case(server, name, data, fname, n))
                    print(f"  done: {name} ({label})", flush=True)
            finally:
                server.close()
    print()
    print(f"{'case':<20} {'requests':>8}  {'status codes':<24} {'RSS before':>10} {'peak':>9} {'after':>9} {'growth':>9} {'wall':>7}")
    for r in rows:
        print(f"{r['case']:<20} {r['requests']:>8}  {r['status']:<24} {r['before']:>7.0f} MB {r['peak']:>6.0f} MB "
              f"{r['after']:>6.0f} MB {r['growth']:>6.0f} MB {r['wall_s']:>6.1f}s")
    for r in rows:
        if r["detail"]:
            print(f"{r['case']}: {r['detail']}")
    bombs = [r for r in rows if r["case"] == "bomb"]
    ok = all(r["growth"] < 1024 and all(s.startswith("4") for s in r["status"].split(",")) for r in bombs)
    print(f"\ntarget (each bomb gets a 4xx, peak growth < 1 GB): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
