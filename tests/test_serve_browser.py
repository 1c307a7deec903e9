"""The `geosolver serve` page in a real headless Chromium (Debian's /usr/bin/chromium driven by
playwright-core from node; see tests/e2e/ and scripts/install-browser-deps.sh).

Starts the CLI (`geosolver serve`, in a thread) on a free localhost port, uploads a generated phone
photo (EXIF GPS in Paris, EXIF orientation 6) through the page's file input, and checks what the
page shows against values computed here: the guess (strategy ``nn``: the coordinates of the photo's
gallery twin), the error in km (independent ``haversine`` package), the Geoscore
(``5000·exp(-km/1492.7)``), the markers and the upright photo. Saves a screenshot under the
test's tmp dir, and to ``docs/screenshot.png`` when ``GEOSOLVER_SCREENSHOT`` is set.

A second server runs with ``--play QUERIES`` and the page plays a whole duel (five rounds): per
round it clicks the map, presses Guess, and the distances and Geoscores shown are checked against
the API's answer (captured by a response listener) and against values computed here from the
clicked point; the model's guess against ``locate_embeddings`` with the query left out. Saves the
finished duel to ``docs/duel.png`` when ``GEOSOLVER_SCREENSHOT`` is set.

Skipped, with the reason in the summary, when chromium, node or playwright-core is missing --
except under CI (``CI=true``), where a missing tool chain fails the test instead.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e"
CHROMIUM = os.environ.get("GEOSOLVER_CHROMIUM", "/usr/bin/chromium")


def in_ci() -> bool:
    """True under a CI service (``CI=true``, as GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _skip_loudly(reason: str) -> None:
    """The browser tool chain is missing: under CI fail (a CI run must exercise the page), else
    skip with the reason printed, warned and in the summary."""
    msg = f"BROWSER TEST NOT RUN: {reason} (run scripts/install-browser-deps.sh)"
    if in_ci():
        pytest.fail(msg + " -- CI is set, so a missing browser tool chain is a failure, not a skip", pytrace=False)
    warnings.warn(msg)
    print(msg, file=sys.stderr)
    pytest.skip(msg)


def _requirements() -> str:
    """Path of node, or skip (loudly) when the browser tool chain is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _skip_loudly(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set GEOSOLVER_CHROMIUM)")
    node = shutil.which("node")
    if not node:
        _skip_loudly("node is not installed")
    if not (E2E / "node_modules" / "playwright-core" / "package.json").exists():
        _skip_loudly("playwright-core is not installed in tests/e2e (cd tests/e2e && npm install)")
    return node


def scene_photo(w: int = 640, h: int = 480) -> Image.Image:
    """A synthetic landscape (sky, sun, hills, field, road, trees), ``w`` x ``h`` pixels."""
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - y) + np.array([200, 225, 250]) * y).astype(np.uint8)
    img = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).copy())
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.72, h * 0.10, w * 0.84, h * 0.26], fill=(255, 236, 170))
    d.polygon([(0, h * 0.62), (w * 0.18, h * 0.36), (w * 0.38, h * 0.58), (w * 0.55, h * 0.40), (w * 0.8, h * 0.6), (w, h * 0.45), (w, h), (0, h)], fill=(120, 140, 160))
    d.polygon([(0, h * 0.70), (w * 0.3, h * 0.58), (w * 0.65, h * 0.66), (w, h * 0.60), (w, h), (0, h)], fill=(96, 150, 80))
    d.polygon([(w * 0.46, h * 0.64), (w * 0.54, h * 0.64), (w * 0.85, h), (w * 0.15, h)], fill=(70, 70, 78))
    for i in range(6):
        yy = h * (0.66 + 0.055 * i * (1 + 0.25 * i))
        d.rectangle([w * 0.497, yy, w * 0.503 + i * 1.5, yy + 3 + 2 * i], fill=(240, 240, 230))
    for x, s in [(0.08, 1.0), (0.2, 0.7), (0.9, 1.1), (0.78, 0.6)]:
        cx, base = w * x, h * 0.72 + 40 * s
        d.rectangle([cx - 3 * s, base - 20 * s, cx + 3 * s, base], fill=(90, 60, 40))
        d.polygon([(cx - 18 * s, base - 18 * s), (cx, base - 70 * s), (cx + 18 * s, base - 18 * s)], fill=(40, 100, 55))
    return img


def phone_jpeg(gps: tuple[float, float]) -> bytes:
    """The scene stored sideways (480x640) with EXIF orientation 6 and GPS, as a phone writes it."""
    from helpers_data import make_exif

    buf = io.BytesIO()
    scene_photo().transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=make_exif(gps=gps, orientation=6).tobytes())
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(argv: list[str]):
    """``geosolver serve`` (the CLI, in a thread of this process so torch is imported only once)
    on a free localhost port: yields the base URL."""
    import httpx
    import uvicorn

    import geosolver.serve.app as app_mod
    from geosolver.cli import main as cli_main
    from geosolver.serve.guard import limit_logs

    port = _free_port()
    servers: list[uvicorn.Server] = []
    real_serve = app_mod.serve

    def serve_in_thread(app, log_level="info"):
        # what app_mod.serve does, on a uvicorn.Server this fixture can stop
        servers.append(app_mod.make_server(app, log_level="warning"))
        servers[-1].run()

    app_mod.serve = serve_in_thread
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(cli_main(argv + ["--port", str(port)])), daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            if rc:
                pytest.fail(f"geosolver serve exited with {rc[0]}")
            try:
                if httpx.get(base + "api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail("geosolver serve did not come up in 90 s")
            time.sleep(0.2)
        yield base
    finally:
        app_mod.serve = real_serve
        for srv in servers:
            srv.should_exit = True
        limit_logs(None)  # make_server installed process-wide log filters
        t.join(15)
    assert rc == [0]


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """``geosolver serve`` serving a test gallery on a free localhost port: yields ``(base_url, world)``."""
    from helpers_serve import PARIS, build_world

    _requirements()  # before building anything
    tiny_clip_dir = request.getfixturevalue("tiny_clip_dir")
    from geosolver.heads import train_head
    from helpers_heads import small_cfg
    from geosolver.store import EmbeddingStore

    root = tmp_path_factory.mktemp("browser")
    world = build_world(root, tiny_clip_dir, gps_photo=phone_jpeg(PARIS))
    world["head"] = root / "head"  # a cells head on the gallery, shown on the map (not fused: the guess stays nn's)
    train_head(small_cfg(EmbeddingStore(world["store"]), world["head"], "cells", epochs=2, max_per_cell=8), progress=False)
    argv = ["serve", "--gallery", str(world["store"]), "--model", tiny_clip_dir, "--device", "cpu", "--strategy", "nn", "--k", "8",
            "--head", str(world["head"])]
    with _serving(argv) as base:
        yield base, world


def test_page_shows_the_guess_truth_and_score(server, tmp_path):
    from haversine import haversine as hv_km

    from geosolver.places import country_of
    from helpers_serve import GPS_ROW, PARIS, gallery_coords

    node = _requirements()
    base, world = server
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(world["uploads"]["gps.jpg"])
    shot = tmp_path / "screenshot.png"
    r = subprocess.run([node, str(E2E / "locate.mjs"), "--url", base, "--image", str(photo), "--screenshot", str(shot), "--chromium", CHROMIUM],
                       cwd=E2E, capture_output=True, text=True, timeout=180)
    assert r.stdout.strip(), f"no output from the browser script:\n{r.stderr}"
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and page["state"] == "done", page

    # the map and its markers
    assert page["leaflet"] == "1.9.4"  # served by the app itself
    assert page["guessMarkers"] == 1 and page["truthMarkers"] == 1
    assert page["neighbourMarkers"] == 8 and page["neighbourItems"] == 5
    assert page["outlinePaths"] > 100  # the offline world outline under the tiles
    from geosolver.heads import load_head

    n_cells = len(load_head(world["head"]).cells)  # every cell listed (fewer than 20): one rectangle each, and the head's guess
    assert page["headCells"] == n_cells >= 2 and page["headGuess"] == 1
    # the numbers, against independent expectations
    lat, lon = gallery_coords(GPS_ROW)
    assert page["guessCoords"] == f"{abs(lat):.3f}° {'N' if lat >= 0 else 'S'}, {abs(lon):.3f}° {'E' if lon >= 0 else 'W'}"
    km = hv_km(PARIS, (lat, lon))
    score = 5000 * math.exp(-km / 1492.7)
    assert page["truthVisible"] and page["truthKm"] == f"{km:,.0f} km"
    assert page["geoscore"] == f"{score:,.0f} / 5000"
    assert page["badge"] == country_of([lat], [lon])[0]
    assert page["confidence"].endswith("%") and page["place"]
    assert "Paris" in page["truthPlace"]
    # the photo is shown upright (stored 480x640 + orientation 6 -> 640x480) and landscape on screen
    assert (page["photo"]["naturalWidth"], page["photo"]["naturalHeight"]) == (640, 480)
    assert page["photoVisible"] and page["photo"]["shownWidth"] > page["photo"]["shownHeight"] > 0
    # nothing broke but the (offline) OpenStreetMap tiles
    assert all("tile.openstreetmap.org" in u for u in page["failedRequests"]), page["failedRequests"]
    assert [e for e in page["consoleErrors"] if "Failed to load resource" not in e] == []

    with Image.open(shot) as im:
        assert im.size == (1280, 800)
    if os.environ.get("GEOSOLVER_SCREENSHOT"):
        dest = REPO / "docs" / "screenshot.png"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, dest)


def test_page_shows_a_clear_error_for_a_non_image(server, tmp_path):
    node = _requirements()
    base, _ = server
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo at all\n")
    r = subprocess.run([node, str(E2E / "locate.mjs"), "--url", base, "--image", str(bad)], cwd=E2E, capture_output=True, text=True, timeout=180)
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert page["state"] == "error" and r.returncode == 1
    assert "not an image" in page["error"] and not page["resultVisible"]
    assert not page["photoVisible"] and page["guessMarkers"] == 0  # no broken image, no stale marker


def test_a_missing_browser_tool_chain_fails_under_ci_and_skips_loudly_locally(monkeypatch, capsys):
    """Under CI (CI=true) the browser test must not pass by skipping: a missing tool chain fails it."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "true")
    try:
        _requirements()
    except pytest.skip.Exception as e:
        pytest.fail(f"under CI=true a missing browser tool chain skipped instead of failing: {e}")
    except pytest.fail.Exception as e:
        assert "BROWSER TEST NOT RUN: no Chromium at /nonexistent/chromium" in str(e)
    else:
        pytest.fail("_requirements() accepted a missing Chromium")
    for value in ("1", "TRUE", "yes"):  # the other spellings CI services use
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="BROWSER TEST NOT RUN"):
            _requirements()
    monkeypatch.delenv("CI")
    with pytest.warns(UserWarning, match="BROWSER TEST NOT RUN"), pytest.raises(pytest.skip.Exception, match=r"no Chromium"):
        _requirements()
    assert "BROWSER TEST NOT RUN" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Play mode: a whole duel against the model in the browser
# ------------------------------------------------------------------------------------------------
PLAY_SPOTS = {  # query id -> true (lat, lon)
    "rome": (41.9028, 12.4964), "oslo": (59.9139, 10.7522), "lisbon": (38.7223, -9.1393),
    "athens": (37.9838, 23.7275), "vienna": (48.2082, 16.3738), "reykjavik": (64.1466, -21.9426),
}


def scene_variant(i: int) -> Image.Image:
    """Scene ``i``: the landscape with its colours turned and, for odd ``i``, mirrored."""
    arr = np.asarray(scene_photo(800, 600), dtype=np.float32)
    tint = np.array([[1.0, 0.95, 0.9], [0.85, 1.0, 0.95], [1.05, 0.9, 0.8], [0.9, 0.9, 1.05], [1.0, 1.05, 0.85], [0.8, 0.95, 1.1]])[i % 6]
    img = Image.fromarray(np.clip(arr * tint, 0, 255).astype(np.uint8))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img


@pytest.fixture(scope="module")
def play_server(tmp_path_factory, request):
    """``geosolver serve --play QUERIES``: yields ``(base_url, world, queries_store)``; the query
    photos are JPEG files carrying EXIF GPS of their true spot (the page must never see it)."""
    import pandas as pd

    from geosolver.store import write_store
    from helpers_data import make_exif
    from helpers_serve import build_world

    _requirements()
    tiny_clip_dir = request.getfixturevalue("tiny_clip_dir")
    root = tmp_path_factory.mktemp("browser-play")
    world = build_world(root, tiny_clip_dir)
    recs, photos = [], []
    for i, (qid, (lat, lon)) in enumerate(PLAY_SPOTS.items()):
        buf = io.BytesIO()
        scene_variant(i).save(buf, "JPEG", quality=90, exif=make_exif(gps=(lat, lon)).tobytes())
        (root / f"{qid}.jpg").write_bytes(buf.getvalue())
        photos.append(buf.getvalue())
        recs.append({"id": qid, "source": str(root / f"{qid}.jpg"), "lat": lat, "lon": lon})
    queries = write_store(root / "queries", world["encoder"].embed_images(photos), pd.DataFrame(recs), world["encoder"].identity())
    argv = ["serve", "--gallery", str(world["store"]), "--model", tiny_clip_dir, "--device", "cpu", "--strategy", "nn", "--k", "8",
            "--play", str(queries.path)]
    with _serving(argv) as base:
        yield base, world, queries


def _km_text(km: float) -> str:
    return f"{km:,.1f} km" if km < 10 else f"{km:,.0f} km"


def test_page_plays_a_duel_against_the_model(play_server, tmp_path):
    from haversine import haversine as hv_km

    from geosolver.locate import Geolocator

    node = _requirements()
    base, world, queries = play_server
    shot = tmp_path / "duel.png"
    r = subprocess.run([node, str(E2E / "play.mjs"), "--url", base, "--screenshot", str(shot), "--chromium", CHROMIUM],
                       cwd=E2E, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip(), f"no output from the browser script:\n{r.stderr}"
    page = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and page["state"] == "over", page
    assert page["locatePanelHidden"] is True
    assert len(page["rounds"]) == 5

    geo = Geolocator.from_store(queries.path.parent / "gallery", encoder=world["encoder"])
    meta = queries.metadata
    you_total = model_total = 0.0
    for n, rec in enumerate(page["rounds"], start=1):
        api = rec["api"]
        assert api["status"] == 200, api
        out = api["body"]
        # the page sent the point that was clicked (in round 1: moved by a second click, not a second marker)
        assert rec["guessDisabledBeforeClick"] is True
        assert rec["markersAfterClicks"] == ([1, 1] if n == 1 else [1])
        assert api["sent"]["lat"] == pytest.approx(rec["expected"]["lat"], abs=1e-6)
        assert api["sent"]["lon"] == pytest.approx(rec["expected"]["lon"], abs=1e-6)
        # the photo was shown (800x600: under the 1600 px cap, so not resized; at most 3 px trimmed per edge)
        assert 794 <= rec["photo"]["w"] <= 800 and 594 <= rec["photo"]["h"] <= 600 and rec["photo"]["shown"]
        # the truth is one of the query photos' true spots
        truth = (out["truth"]["lat"], out["truth"]["lon"])
        qid = next(q for q, spot in PLAY_SPOTS.items() if spot == pytest.approx(truth, abs=1e-9))
        # the player's distance and score: computed here from the clicked point
        km = hv_km(truth, (rec["expected"]["lat"], rec["expected"]["lon"]))
        score = 5000 * math.exp(-km / 1492.7)
        assert out["player"]["km"] == pytest.approx(km, rel=1e-3)
        shown = rec["page"]
        assert shown["youKm"] == _km_text(out["player"]["km"])
        assert shown["youScore"] == f"{out['player']['geoscore']:,.0f}"
        assert abs(float(shown["youScore"].replace(",", "")) - score) <= 1.0
        # the model's guess: the stored embedding, the query itself left out of the gallery
        row = int(np.flatnonzero(meta["id"].to_numpy() == qid)[0])
        exp = geo.locate_embeddings(queries.embeddings([row]), k=8, strategy="nn", exclude_ids=[qid])[0]
        assert (out["model"]["lat"], out["model"]["lon"]) == pytest.approx((exp.lat, exp.lon), abs=1e-9)
        mkm = hv_km(truth, (exp.lat, exp.lon))
        assert shown["modelKm"] == _km_text(out["model"]["km"]) and out["model"]["km"] == pytest.approx(mkm, rel=1e-3)
        assert shown["modelScore"] == f"{out['model']['geoscore']:,.0f}"
        assert abs(float(shown["modelScore"].replace(",", "")) - 5000 * math.exp(-mkm / 1492.7)) <= 1.0
        # the map: one marker each, two labelled lines; the running totals
        assert (shown["youMarkers"], shown["modelMarkers"], shown["truthMarkers"]) == (1, 1, 1)
        assert sorted(shown["kmLabels"]) == sorted([shown["youKm"], shown["modelKm"]])
        assert shown["round"] == f"Round {n} / 5" and shown["resultVisible"]
        you_total += out["player"]["geoscore"]
        model_total += out["model"]["geoscore"]
        assert shown["totalYou"] == f"{you_total:,.0f}" and shown["totalModel"] == f"{model_total:,.0f}"
        assert shown["nextVisible"] == (n < 5) and shown["summaryVisible"] == (n == 5)

    s = page["summary"]
    assert s["finalYou"] == f"{you_total:,.0f}" and s["finalModel"] == f"{model_total:,.0f}"
    assert len(s["rows"]) == 5 and [row[0] for row in s["rows"]] == ["1", "2", "3", "4", "5"]
    you, model = round(you_total), round(model_total)
    assert s["winner"].startswith("You win" if you > model else "The model wins" if you < model else "A draw")
    assert page["newGame"]["round"] == "Round 1 / 5" and page["newGame"]["totalYou"] == "0" and not page["newGame"]["summaryVisible"]
    assert page["afterBack"] == {"mode": "locate", "locateHidden": False, "playHidden": True}
    assert all(p["status"] == 200 and p["type"] == "image/jpeg" for p in page["photoResponses"]) and len(page["photoResponses"]) >= 6
    assert all("tile.openstreetmap.org" in u for u in page["failedRequests"]), page["failedRequests"]
    assert [e for e in page["consoleErrors"] if "Failed to load resource" not in e] == []

    with Image.open(shot) as im:
        assert im.size == (1280, 800)
    if os.environ.get("GEOSOLVER_SCREENSHOT"):
        dest = REPO / "docs" / "duel.png"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, dest)
