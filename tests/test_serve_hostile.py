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

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import helpers_serve as hs  # noqa: E402  (the gallery world and upload helpers)
from helpers_serve import client, geoloc, world  # noqa: E402, F401  (the module-scoped fixtures)

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
