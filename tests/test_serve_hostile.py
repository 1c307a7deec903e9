"""`geosolver serve` against hostile or careless clients: pixel bombs under the global guard, the
concurrent-decode limit, aborted and slow uploads, a photo in the wrong form field, and bad numbers
on the command line.

Memory and speed targets live in ``benchmarks/serve_memory.py``; these tests check behaviour only
(status codes, messages, limits), never timing or RSS.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import helpers_serve as hs  # noqa: E402  (the gallery world and upload helpers)

from geosolver.cli import main as cli_main  # noqa: E402


# ------------------------------------------------------------------------------------------------
# 1. pixel budget, checked from the header before decoding
# ------------------------------------------------------------------------------------------------
def test_pixel_bomb_under_the_global_guard_is_refused_from_the_header(client, monkeypatch):
    """13000x13000 = 169 Mpx: under images.MAX_PIXELS (180 M), far over the server's budget."""
    from PIL import ImageFile

    from geosolver.images import MAX_PIXELS
    from geosolver.serve import DEFAULT_MAX_PIXELS

    assert 13000 * 13000 < MAX_PIXELS and DEFAULT_MAX_PIXELS < 13000 * 13000

    def no_decoding(*a, **kw):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    r = hs.post(client, hs.png_declaring(13000, 13000), "bomb.png")
    assert r.status_code in (413, 422), r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail.splitlines()) == 1
    assert "bomb.png" in detail and "13000x13000" in detail and "169,000,000" in detail
    assert f"{DEFAULT_MAX_PIXELS:,}" in detail and "--max-pixels" in detail
    assert "decompression bomb" in detail.lower()


def test_pixel_budget_is_configurable_and_reported(geoloc, world):
    from geosolver.serve import create_app

    small = world["uploads"]["plain.png"]  # 64x48 = 3072 px
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, max_pixels=3000, warmup=False)) as c:
        assert c.get("/api/health").json()["max_pixels"] == 3000
        r = hs.post(c, small, "plain.png")
        assert r.status_code == 422 and "3,072" in r.json()["detail"] and "3,000" in r.json()["detail"]
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, max_pixels=3072, warmup=False)) as c:
        assert hs.post(c, small, "plain.png").status_code == 200


def test_pixel_budget_counts_the_reduced_jpeg_decode(geoloc):
    """A 4000x3000 JPEG is decoded at 1/8 scale (draft) for a 32 px model: 500x375 pixels decoded."""
    from geosolver.serve import create_app

    big = hs.encode(hs.pattern(2, (4000, 3000)), "JPEG", quality=80)
    png = hs.encode(hs.pattern(2, (4000, 3000)), "PNG")
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, max_pixels=1_000_000, warmup=False)) as c:
        r = hs.post(c, big, "big.jpg")
        assert r.status_code == 200, r.text
        assert (r.json()["image"]["width"], r.json()["image"]["height"]) == (4000, 3000)
        r = hs.post(c, png, "big.png")  # a PNG cannot be decoded reduced: 12 Mpx over the budget
        assert r.status_code == 422 and "12,000,000" in r.json()["detail"]


def test_bad_settings_are_refused(geoloc):
    from geosolver.errors import ServeError
    from geosolver.serve import create_app

    for kw in ({"max_pixels": 0}, {"max_decodes": 0}, {"read_timeout": 0}, {"max_batch": 0}):
        with pytest.raises(ServeError):
            create_app(geoloc, warmup=False, **kw)


def test_concurrent_decodes_are_limited(geoloc, world, monkeypatch):
    import geosolver.serve.app as app_mod
    from geosolver.serve import create_app

    real = app_mod.decode_photo
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow_decode(*a, **kw):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.15)
            return real(*a, **kw)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(app_mod, "decode_photo", slow_decode)
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, max_decodes=2, warmup=False)) as c:
        assert c.get("/api/health").json()["max_decodes"] == 2
        with ThreadPoolExecutor(6) as ex:
            codes = list(ex.map(lambda _: hs.post(c, world["uploads"]["plain.png"], "p.png").status_code, range(6)))
    assert codes == [200] * 6
    assert state["peak"] == 2


# ------------------------------------------------------------------------------------------------
# 2. aborted and slow uploads, photo in the wrong field
# ------------------------------------------------------------------------------------------------
async def _call(app, messages, delay_after: int | None = None, delay: float = 0.0):
    """Run one ``POST /api/locate`` through the raw ASGI interface.

    ``messages``: the ``receive`` messages in order; after ``delay_after`` of them the client stalls
    for ``delay`` seconds before each further one. Returns ``(status, body)``.
    """
    sent: list[dict] = []
    it = iter(messages)
    count = {"n": 0}

    async def receive():
        if delay_after is not None and count["n"] >= delay_after:
            await asyncio.sleep(delay)
        count["n"] += 1
        try:
            return next(it)
        except StopIteration:
            await asyncio.sleep(3600)

    async def send(msg):
        sent.append(msg)

    body = b"".join(m.get("body", b"") for m in messages)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/locate", "raw_path": b"/api/locate", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body) + 100000).encode())],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (start["status"] if start else None), out


def test_client_disconnect_mid_upload_logs_one_line(geoloc, caplog):
    from geosolver.serve import create_app

    app = create_app(geoloc, warmup=False)
    msgs = [{"type": "http.request", "body": b"\x89PNG\r\n" + b"\x00" * 1000, "more_body": True}, {"type": "http.disconnect"}]
    with caplog.at_level(logging.INFO):
        asyncio.run(_call(app, msgs))  # must not raise (uvicorn would log "Exception in ASGI application")
    lines = [r for r in caplog.records if "disconnect" in r.getMessage().lower()]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert not any(r.exc_info for r in caplog.records)


def test_slow_upload_times_out_with_408(geoloc):
    from geosolver.serve import create_app

    app = create_app(geoloc, read_timeout=0.3, warmup=False)
    msgs = [{"type": "http.request", "body": b"\x89PNG\r\n", "more_body": True}] + [
        {"type": "http.request", "body": b"\x00" * 10, "more_body": True} for _ in range(100)
    ]
    t0 = time.perf_counter()
    status, body = asyncio.run(_call(app, msgs, delay_after=1, delay=0.1))  # 100 x 0.1 s trickle
    assert status == 408, body
    assert b"0.3" in body and b"--read-timeout" in body
    assert time.perf_counter() - t0 < 5
    assert TestClient(base_url="http://127.0.0.1", app=app).get("/api/health").json()["read_timeout_s"] == 0.3


def test_photo_in_the_wrong_field_says_to_use_file(client, world):
    big = hs.encode(hs.pattern(4, (400, 300)), "PNG")
    assert len(big) > 1024
    r = hs.post(client, big, "photo.png", field="photo")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'file'" in detail and "'photo'" in detail and "longer than" not in detail
    # a long text field (no file name) still gets the field-length message, with the hint
    r = client.post("/api/locate", files={"file": ("p.png", world["uploads"]["plain.png"], "image/png")}, data={"note": "x" * 5000})
    assert r.status_code == 400 and "'note'" in r.json()["detail"] and "'file'" in r.json()["detail"]


# ------------------------------------------------------------------------------------------------
# 3. numeric options are checked by the argument parser
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opt, value",
    [("--port", "70000"), ("--port", "0"), ("--port", "http"), ("--max-batch", "0"), ("--k", "0"), ("--k", "-3"),
     ("--max-upload-mb", "0"), ("--max-upload-mb", "-1"), ("--max-upload-mb", "nan"), ("--max-pixels", "0"),
     ("--max-decodes", "0"), ("--read-timeout", "0")],
)
def test_cli_serve_bad_numbers_are_one_line_exit_2(tmp_path, capsys, opt, value):
    with pytest.raises(SystemExit) as e:
        cli_main(["serve", "--gallery", str(tmp_path / "nope"), opt, value])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and opt in err[0] and value in err[0]


def test_cli_serve_passes_the_new_limits(world, monkeypatch):
    import geosolver.serve.app as app_mod

    seen = {}

    def fake_serve(app, log_level="info"):
        with TestClient(base_url="http://127.0.0.1", app=app) as c:
            seen["health"] = c.get("/api/health").json()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    rc = cli_main(["serve", "--gallery", str(world["store"]), "--model", world["clip_dir"], "--device", "cpu",
                   "--max-pixels", "1234567", "--max-decodes", "3", "--read-timeout", "12.5"])
    assert rc == 0
    h = seen["health"]
    assert h["max_pixels"] == 1234567 and h["max_decodes"] == 3 and h["read_timeout_s"] == 12.5


# ------------------------------------------------------------------------------------------------
# 4. a slowloris on headers: bounded connections, a header deadline, a small log
# ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slowloris_on_headers_leaves_the_server_answering_with_a_small_log(geoloc, capfd):
    """300 sockets trickle header lines at a real server capped at 100 connections with a 1.5 s
    header deadline: /api/health still answers, the server never holds more than 100 connections,
    trickling connections are closed, and the log stays a few lines (no tracebacks)."""
    import socket

    import httpx

    from geosolver.serve import create_app
    from geosolver.serve.app import make_server
    from geosolver.serve.guard import limit_logs

    port = _free_port()
    app = create_app(geoloc, warmup=False, port=port, max_connections=100, header_timeout=1.5)
    server = make_server(app, log_level="warning")
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    capfd.readouterr()  # start-up lines

    socks: list[socket.socket] = []
    stop = threading.Event()
    stats = {"opened": 0, "closed_by_server": 0, "most_open": 0}

    def attack():
        def connect():
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                stats["opened"] += 1
                return s
            except OSError:
                s.close()
                return None

        socks.extend(s for s in (connect() for _ in range(300)) if s is not None)
        while not stop.is_set():
            for i, s in enumerate(socks):
                try:
                    s.sendall(b"X-Slow: 1\r\n")  # never the blank line that ends the headers
                except OSError:
                    stats["closed_by_server"] += 1
                    s.close()
                    socks[i] = connect() or s  # a slowloris reconnects
            stats["most_open"] = max(stats["most_open"], len(server.server_state.connections))
            stop.wait(0.3)

    t = threading.Thread(target=attack, daemon=True)
    t.start()
    try:
        statuses = []
        for _ in range(3):
            time.sleep(1.0)
            statuses.append(httpx.get(base + "/api/health", timeout=10).status_code)
            stats["most_open"] = max(stats["most_open"], len(server.server_state.connections))
    finally:
        stop.set()
        t.join(10)
        for s in socks:
            s.close()
        server.should_exit = True
        limit_logs(None)  # make_server installed process-wide log filters
    err = capfd.readouterr().err
    assert statuses == [200, 200, 200]
    assert stats["opened"] >= 300 and stats["closed_by_server"] >= 100  # evicted at the cap or past the deadline
    assert stats["most_open"] <= 100
    assert "Traceback" not in err and len(err.splitlines()) <= 10 and len(err) < 4000, err[-2000:]


def test_a_connection_that_trickles_its_headers_is_closed_at_the_header_deadline(geoloc):
    """Far below the connection cap, one trickling connection is closed ~0.5 s after it opened, while
    a keep-alive connection that sent a whole request is answered."""
    import socket

    import httpx

    from geosolver.serve import create_app
    from geosolver.serve.app import make_server
    from geosolver.serve.guard import limit_logs

    port = _free_port()
    server = make_server(create_app(geoloc, warmup=False, port=port, header_timeout=0.5), log_level="warning")
    threading.Thread(target=server.run, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = time.monotonic()
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed_after = None
        while time.monotonic() - t0 < 4:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.1)
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except socket.timeout:
                continue
            except OSError:
                closed_after = time.monotonic() - t0
                break
        s.close()
        assert closed_after is not None and 0.4 <= closed_after < 2.5, closed_after
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:  # whole requests on one keep-alive connection
            assert [c.get("/api/health").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        server.should_exit = True
        limit_logs(None)


def test_log_filter_keeps_one_line_per_kind_per_interval():
    from geosolver.serve.guard import OncePerInterval

    now = [0.0]
    f = OncePerInterval(interval=10.0, clock=lambda: now[0])
    logger = logging.getLogger("test.flood")
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        import sys

        exc = sys.exc_info()

    def rec(msg):
        return logger.makeRecord("test.flood", logging.ERROR, __file__, 1, msg, (), exc)

    first = rec("accept failed")
    assert f.filter(first) and first.exc_info is not None  # the first of a kind keeps its traceback
    assert [f.filter(rec("accept failed")) for _ in range(500)] == [False] * 500
    assert f.filter(rec("another kind"))
    now[0] = 10.5
    later = rec("accept failed")
    assert f.filter(later) and later.exc_info is None
    assert "[500 more like this in the last 10 s]" in later.getMessage() and "Too many open files" in later.getMessage()


# ------------------------------------------------------------------------------------------------
# 5. the Host header (DNS rebinding)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bind, allow, host, status",
    [("127.0.0.1", (), "127.0.0.1:8000", 200), ("127.0.0.1", (), "localhost:8000", 200), ("127.0.0.1", (), "[::1]:8000", 200),
     ("127.0.0.1", (), "evil.example", 400), ("127.0.0.1", (), "evil.example:8000", 400), ("127.0.0.1", (), "127.0.0.1.evil.example", 400),
     ("127.0.0.1", ("photos.lan",), "photos.lan:8000", 200), ("127.0.0.1", ("photos.lan",), "other.lan", 400),
     ("127.0.0.1", ("*",), "anything.example", 200), ("192.168.1.5", (), "192.168.1.5:8000", 200), ("192.168.1.5", (), "evil.example", 400),
     ("0.0.0.0", (), "anything.example", 200), ("0.0.0.0", ("photos.lan",), "anything.example", 400)],
)
def test_host_header_must_name_this_server(geoloc, bind, allow, host, status):
    from geosolver.serve import create_app

    app = create_app(geoloc, warmup=False, host=bind, allow_host=allow)
    with TestClient(base_url="http://127.0.0.1", app=app) as c:
        r = c.get("/api/health", headers={"Host": host})
    assert r.status_code == status, r.text
    if status == 400:
        assert "--allow-host" in r.text and len(r.text.splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# 6. Play: one client cannot evict another's round; photos are not identified by their hash
# ------------------------------------------------------------------------------------------------
def test_a_flood_of_rounds_from_one_client_keeps_another_clients_round():
    from geosolver.serve.play import RoundBook

    book = RoundBook(ttl=600, max_rounds=50, rounds_per_client=20, clock=lambda: 0.0)
    mine = book.issue(7, client="10.0.0.1")
    theirs = [book.issue(i, client="10.0.0.2") for i in range(10_000)]
    assert book.peek(mine) == 7  # still open
    assert len(book) == 21  # 1 + the flooder's last 20
    assert book.peek(theirs[-1]) == 9999 and book.peek(theirs[-20]) == 9980
    with pytest.raises(Exception, match="unknown round"):
        book.peek(theirs[-21])


def test_when_the_book_is_full_the_heaviest_client_loses_its_oldest_round():
    from geosolver.serve.play import RoundBook

    book = RoundBook(ttl=600, max_rounds=6, rounds_per_client=5, clock=lambda: 0.0)
    a = book.issue(0, client="a")
    b = [book.issue(i, client="b") for i in range(1, 6)]  # b holds 5: the book holds 6
    c = book.issue(9, client="c")  # 7 > 6: b (the heaviest) loses b[0]; a keeps its older round
    assert len(book) == 6 and book.peek(a) == 0 and book.peek(c) == 9
    with pytest.raises(Exception, match="unknown round"):
        book.peek(b[0])
    assert [book.peek(t) for t in b[1:]] == [2, 3, 4, 5]


def test_round_photo_bytes_differ_on_every_showing():
    import hashlib
    import io

    from PIL import Image

    from geosolver.serve.photo import PHOTO_MAX_TRIM, render_photo

    src = hs.encode(hs.pattern(4, (640, 480)), "JPEG", quality=95)
    # seeded draws: deterministic here (the server draws from a fresh secret seed per showing; 12 draws
    # out of 4^4 trims x 11 qualities can collide by chance, which made this test flaky when unseeded)
    shown = [render_photo(src, "q.jpg", max_pixels=None, rng=np.random.default_rng(seed)) for seed in range(12)]
    assert len({hashlib.sha256(b).hexdigest() for b in shown}) == 12
    for b in shown:
        w, h = Image.open(io.BytesIO(b)).size
        assert 640 - 2 * PHOTO_MAX_TRIM <= w <= 640 and 480 - 2 * PHOTO_MAX_TRIM <= h <= 480


# ------------------------------------------------------------------------------------------------
# 7. Play photo reads are capped in bytes (a zip bomb member, a device)
# ------------------------------------------------------------------------------------------------
def _zip_with_member(path, name: str, size: int) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)


def test_read_bytes_refuses_a_huge_zip_member_before_reading_it(tmp_path):
    import tracemalloc

    from geosolver.images import ImageReadError, read_bytes, zip_source

    _zip_with_member(tmp_path / "bomb.zip", "x.jpg", 64 << 20)  # 64 MB of zeros, ~64 KB compressed
    assert (tmp_path / "bomb.zip").stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match="is 67108864 bytes, over the"):
            read_bytes(zip_source(tmp_path / "bomb.zip", "x.jpg"), max_bytes=1_000_000)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    with pytest.raises(ImageReadError, match="not a photo file"):
        read_bytes("/dev/zero", max_bytes=1_000_000)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    assert read_bytes(small, max_bytes=1000) == b"x" * 1000
    with pytest.raises(ImageReadError, match="is 1000 bytes, over the"):
        read_bytes(small, max_bytes=999)


def test_play_round_from_a_zip_bomb_member_is_skipped_with_one_line(tmp_path, caplog):
    import pandas as pd

    from geosolver.encoders import load_encoder
    from geosolver.images import zip_source
    from geosolver.locate import Geolocator
    from geosolver.serve import create_app
    from geosolver.store import write_store

    enc = load_encoder("histogram")
    imgs = [hs.encode(hs.pattern(i), "PNG") for i in range(6)]
    g = write_store(tmp_path / "g", enc.embed_images(imgs), pd.DataFrame({"id": [f"g{i}" for i in range(6)], "lat": [1.0] * 6, "lon": [2.0] * 6}),
                    enc.identity())
    _zip_with_member(tmp_path / "bomb.zip", "x.jpg", 32 << 20)
    q = write_store(tmp_path / "q", enc.embed_images(imgs[:1]),
                    pd.DataFrame({"id": ["q0"], "lat": [3.0], "lon": [4.0], "source": [zip_source(tmp_path / "bomb.zip", "x.jpg")]}), enc.identity())
    app = create_app(Geolocator.from_store(g.path, encoder=enc), warmup=False, play=q.path, max_upload_mb=2)
    with TestClient(base_url="http://127.0.0.1", app=app) as c, caplog.at_level(logging.WARNING):
        r = c.get("/api/round")
    assert r.status_code == 503 and "1 of 1 query photos could not be read" in r.json()["detail"]
    lines = [rec.getMessage() for rec in caplog.records if "q0" in rec.getMessage()]
    assert len(lines) == 1 and "is 33554432 bytes, over the" in lines[0]


# ------------------------------------------------------------------------------------------------
# 8. first contact
# ------------------------------------------------------------------------------------------------
def test_serve_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["serve", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "drop a photo" in out and "--play" in out and "--allow-host" in out and "--rounds-per-client" in out


# ------------------------------------------------------------------------------------------------
# 6. --head: a directory that is not a head, or a head of another encoder or dim
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "not-a-head", "other-encoder", "other-dim", "fuse-alone"])
def test_cli_serve_bad_head_is_one_line_exit_2(case, world, tmp_path, monkeypatch, capsys):
    """The tiny CLIP gallery is 16-d: a head trained on a 16-d store of another encoder, or on an
    8-d one, is refused at start-up (before the index is built), as is a folder that is no head."""
    import geosolver.serve.app as app_mod
    from geosolver.heads import train_head
    from helpers_heads import ENC, cluster_store, small_cfg

    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: pytest.fail("served despite a bad --head"))
    head, words = tmp_path / "head", []
    if case == "missing":
        words = ["does not exist", str(head)]
    elif case == "not-a-head":
        head.mkdir()
        (head / "notes.txt").write_text("hello")
        words = ["is not a trained head", "head.json"]
    elif case in ("other-encoder", "other-dim"):
        enc = {**ENC, "name": "another-encoder"} if case == "other-encoder" else {**ENC, "dim": 8}
        store, _ = cluster_store(tmp_path / "g", n_per=5, encoder=enc)
        train_head(small_cfg(store, head, "cells", epochs=1), progress=False)
        words = ["another encoder"] if case == "other-encoder" else ["dim-8", "dim 16"]
    argv = ["serve", "--gallery", str(world["store"]), "--model", world["clip_dir"], "--device", "cpu"]
    argv += ["--fuse"] if case == "fuse-alone" else ["--head", str(head)]
    words = words or ["--head DIR"]
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("geosolver serve: error:") and all(w in err for w in words), err
