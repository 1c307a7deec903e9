"""`geosolver serve --play QUERIES`: the GeoGuessr duel against the model (FastAPI TestClient).

The world: a gallery of block patterns embedded with the offline ``histogram`` encoder, and a
query store of photos kept as a file (a 2000x1500 JPEG with EXIF GPS, also a gallery photo), zip
members and a tar member, plus one query whose photo is missing. Expected distances and scores are
computed here with the independent ``haversine`` package and the published Geoscore formula. The
model's leave-one-out guesses are planted: each scored query's nearest other gallery photo has its
pixels (or its scene), so ``nn`` answers that photo's coordinates (``MODEL_ANSWER``, by hand).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from haversine import haversine as hv_km  # noqa: E402  (independent great-circle distance)
from helpers_data import make_exif  # noqa: E402
from helpers_serve import encode, gallery_coords, pattern, serve_client  # noqa: E402

from geosolver.cli import main as cli_main  # noqa: E402

N_GALLERY = 24
TWIN = 3  # the query that is also gallery photo g003 (its file carries EXIF GPS)
LOOK = 11  # gallery photo g011 is the twin's scene at 64x48 px: the twin's nearest gallery photo once g003 is left out
#: Each query's leave-one-out ``nn`` answer, known by construction: the coordinates of the gallery
#: photo with the same pixels (q-zip-1: g007, q-tar: g013) or scene (g003: g011), by hand from
#: ``gallery_coords(i) = (36 + 7.3 i mod 24, -9 + 11.7 i mod 39)``.
MODEL_ANSWER = {"q-zip-1": (39.1, -5.1), "q-tar": (58.9, 26.1), "g003": (44.3, 2.7)}
EXIF_GPS = (48.8566, 2.3522)  # what the twin's EXIF claims (the served photo must not say it)


class Clock:
    """A monotonic clock the tests move by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _geoscore(km: float) -> float:
    return 5000 * math.exp(-km / 1492.7)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Overrides conftest's ``world``: the histogram gallery (``store``) and the Play query store."""
    from geosolver.encoders import load_encoder
    from geosolver.images import tar_source, zip_source
    from geosolver.store import write_store

    root = tmp_path_factory.mktemp("play")
    enc = load_encoder("histogram")
    twin = encode(pattern(TWIN, (2000, 1500)), "JPEG", make_exif(gps=EXIF_GPS, extra={0x0110: "Cam 1", 0x010E: "secret place"}), quality=90)
    gallery_src = [encode(pattern(i), "PNG") for i in range(N_GALLERY)]
    gallery_src[TWIN] = twin
    gallery_src[LOOK] = encode(pattern(TWIN), "PNG")  # the twin's scene, small: its nearest other gallery photo
    lat, lon = zip(*(gallery_coords(i) for i in range(N_GALLERY)))
    gallery = write_store(root / "gallery", enc.embed_images(gallery_src),
                          pd.DataFrame({"id": [f"g{i:03d}" for i in range(N_GALLERY)], "lat": lat, "lon": lon}), enc.identity())

    (root / "twin.jpg").write_bytes(twin)
    photos = {"q-zip-1": gallery_src[7], "q-zip-2": encode(pattern(102), "PNG")}  # q-zip-1: gallery photo g007's very bytes
    with zipfile.ZipFile(root / "photos.zip", "w") as z:
        for name, data in photos.items():
            z.writestr(f"imgs/{name}.img", data)
    tar_photo = encode(pattern(13), "WEBP", lossless=True)  # g013's pixels (lossless): the same colour histogram
    with tarfile.open(root / "photos.tar", "w") as t:
        info = tarfile.TarInfo("x/q-tar.webp")
        info.size = len(tar_photo)
        t.addfile(info, io.BytesIO(tar_photo))
    rows = [
        ("g003", str(root / "twin.jpg"), *gallery_coords(TWIN), twin),
        ("q-zip-1", zip_source(root / "photos.zip", "imgs/q-zip-1.img"), -33.8688, 151.2093, photos["q-zip-1"]),
        ("q-zip-2", zip_source(root / "photos.zip", "imgs/q-zip-2.img"), 40.7128, -74.0060, photos["q-zip-2"]),
        ("q-tar", tar_source(root / "photos.tar", "x/q-tar.webp"), -22.9068, -43.1729, tar_photo),
        ("q-gone", str(root / "missing.jpg"), 35.6762, 139.6503, pattern(104)),
    ]
    ids, sources, qlat, qlon, images = zip(*rows)
    meta = pd.DataFrame({"id": ids, "source": sources, "lat": qlat, "lon": qlon})
    queries = write_store(root / "queries", enc.embed_images(list(images)), meta, enc.identity())
    return {"root": root, "store": gallery, "queries": queries, "encoder": enc, "meta": meta, "twin": twin}


def make_client(geoloc, queries=None, **kw):
    kw.setdefault("strategy", "nn")
    kw.setdefault("k", 5)
    kw.setdefault("allow_gallery_queries", True)  # the twin query is gallery photo g003 (leave-one-out is under test)
    return serve_client(geoloc, play=queries, warmup=False, **kw)


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def serve_options(world, clock):
    """conftest's ``client`` serves Play over the query store, nn over 5 neighbours, on the test's clock."""
    return {"play": world["queries"].path, "clock": clock, "strategy": "nn", "k": 5, "allow_gallery_queries": True, "warmup": False}


def _shown_at(size: tuple[int, int], full: tuple[int, int]) -> bool:
    """A served photo's size: ``full`` less at most 3 px trimmed from each edge (per showing)."""
    return all(f - 6 <= x <= f for x, f in zip(size, full))


def play_of(client):
    return client.app.state.serve.play


def round_for(client, qid: str) -> dict:
    """A round (through GET /api/round) showing query ``qid``."""
    play = play_of(client)
    for _ in range(400):
        r = client.get("/api/round")
        assert r.status_code == 200, r.text
        d = r.json()
        if play.ids[play.book.peek(d["token"])] == qid:
            return d
    raise AssertionError(f"query {qid} was never drawn")


def truth_of(world, qid: str) -> tuple[float, float]:
    m = world["meta"].set_index("id")
    return float(m.loc[qid, "lat"]), float(m.loc[qid, "lon"])


def guess(client, token: str, lat, lon, **kw):
    return client.post(f"/api/round/{token}/guess", json={"lat": lat, "lon": lon}, **kw)


# ------------------------------------------------------------------------------------------------
# a round never gives the answer away
# ------------------------------------------------------------------------------------------------
def test_round_json_carries_no_coordinates_and_no_query_id(client, world):
    seen = set()
    for _ in range(12):
        r = client.get("/api/round")
        assert r.status_code == 200, r.text
        d = r.json()
        assert set(d) == {"token", "photo_url", "expires_in"}
        assert d["photo_url"] == f"/api/round/{d['token']}/photo" and d["expires_in"] == 600
        assert len(d["token"]) >= 20
        seen.add(play_of(client).ids[play_of(client).book.peek(d["token"])])
        text = r.text
        for qid, lat, lon in world["meta"][["id", "lat", "lon"]].itertuples(index=False):
            assert qid not in text
            for v in (lat, lon):
                assert f"{v:.2f}" not in text and f"{v:.1f}" not in text
    assert "q-gone" not in seen  # its photo is missing: never drawn


def test_photo_is_a_metadata_free_jpeg_downscaled_from_the_exif_gps_original(client, world):
    from geosolver.images import exif_gps

    assert exif_gps(world["twin"]) == pytest.approx(EXIF_GPS, abs=1e-3)  # guard: the original leaks the spot
    d = round_for(client, "g003")
    r = client.get(d["photo_url"])  # rendered when the round was drawn (cache)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    data = r.content
    assert data[:3] == b"\xff\xd8\xff"
    assert b"Exif" not in data and b"secret place" not in data and b"Cam 1" not in data
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and _shown_at(im.size, (1600, 1200))
    assert len(im.getexif()) == 0 and exif_gps(data) is None
    assert not {"exif", "icc_profile", "xmp", "comment"} & set(im.info)
    # the same photo rendered on demand (not cached any more) is as clean
    play = play_of(client)
    play.photos.clear()
    r2 = client.get(d["photo_url"])
    assert r2.status_code == 200 and b"Exif" not in r2.content and _shown_at(Image.open(io.BytesIO(r2.content)).size, (1600, 1200))
    # and it is the picture: same colours as the original, downscaled
    small = np.asarray(Image.open(io.BytesIO(world["twin"])).convert("RGB").resize((1600, 1200)), dtype=float)
    w, h = im.size  # a few edge pixels trimmed: compare the centre, allowing the shift
    core = np.asarray(im.convert("RGB"), dtype=float)[10 : h - 10, 10 : w - 10]
    assert min(np.abs(core - small[10 + dy : h - 10 + dy, 10 + dx : w - 10 + dx]).mean() for dy in range(4) for dx in range(4)) < 8


@pytest.mark.parametrize("qid", ["q-zip-1", "q-zip-2", "q-tar"])
def test_photos_of_archive_members_are_served(client, qid):
    d = round_for(client, qid)
    r = client.get(d["photo_url"])
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"
    assert _shown_at(Image.open(io.BytesIO(r.content)).size, (64, 48))  # small photos are not upscaled


# ------------------------------------------------------------------------------------------------
# the guess: the player's and the model's scores
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qid, click", [("q-zip-1", (-37.8136, 144.9631)), ("g003", (51.5074, -0.1278)), ("q-tar", (10.5, -66.9))])
def test_guess_scores_the_player_and_the_leave_one_out_model(client, world, geoloc, qid, click):
    d = round_for(client, qid)
    r = guess(client, d["token"], *click)
    assert r.status_code == 200, r.text
    out = r.json()
    truth = truth_of(world, qid)
    assert (out["truth"]["lat"], out["truth"]["lon"]) == pytest.approx(truth, abs=1e-9)
    assert out["truth"]["place"]["name"]
    km = hv_km(truth, click)
    assert (out["player"]["lat"], out["player"]["lon"]) == pytest.approx(click)
    assert out["player"]["km"] == pytest.approx(km, rel=2e-3)
    assert out["player"]["geoscore"] == pytest.approx(_geoscore(km), rel=2e-3)
    # the model: the stored embedding, the query's own id excluded: the planted gallery look-alike's spot
    assert (out["model"]["lat"], out["model"]["lon"]) == pytest.approx(MODEL_ANSWER[qid], abs=1e-9)
    mkm = hv_km(truth, MODEL_ANSWER[qid])
    assert out["model"]["km"] == pytest.approx(mkm, rel=2e-3) and out["model"]["geoscore"] == pytest.approx(_geoscore(mkm), rel=2e-3)
    assert out["round"]["leave_one_out"] is True and out["round"]["strategy"] == "nn"


def test_the_planted_answers_are_the_nearest_gallery_photos(world):
    """Guard of MODEL_ANSWER, by brute force over the stored embeddings (not the code under test)."""
    g, q = world["store"], world["queries"]
    ids = g.metadata["id"].to_numpy()
    G = g.embeddings(list(range(len(g))))
    for qid, row in (("q-zip-1", 7), ("q-tar", 13), ("g003", LOOK)):
        e = q.embeddings([int(np.flatnonzero(q.metadata["id"].to_numpy() == qid)[0])])[0]
        sims = np.where(ids == qid, -np.inf, G @ e)
        assert int(np.argmax(sims)) == row and np.sort(sims)[-2] < sims[row] - 1e-3, qid
        assert gallery_coords(row) == MODEL_ANSWER[qid]
    assert int(np.argmax(G @ q.embeddings([0])[0])) == TWIN  # without leave-one-out, g003 would answer itself


def test_a_query_in_the_gallery_is_not_found_as_its_own_twin(client):
    out = guess(client, round_for(client, "g003")["token"], 0.0, 0.0).json()
    assert (out["model"]["lat"], out["model"]["lon"]) != pytest.approx(gallery_coords(TWIN), abs=1e-3)
    assert out["model"]["km"] == pytest.approx(hv_km(gallery_coords(TWIN), MODEL_ANSWER["g003"]), rel=2e-3)


def test_guess_accepts_a_urlencoded_form(client, world):
    d = round_for(client, "q-zip-2")
    r = client.post(f"/api/round/{d['token']}/guess", data={"lat": "41.9", "lon": "12.5"})
    assert r.status_code == 200, r.text
    assert r.json()["player"]["km"] == pytest.approx(hv_km(truth_of(world, "q-zip-2"), (41.9, 12.5)), rel=2e-3)


# ------------------------------------------------------------------------------------------------
# tokens: single use, expiry, unknown, bounded
# ------------------------------------------------------------------------------------------------
def test_a_token_is_single_use(client):
    d = client.get("/api/round").json()
    assert guess(client, d["token"], 10, 10).status_code == 200
    r = guess(client, d["token"], 10, 10)
    assert r.status_code == 409 and "already played" in r.json()["detail"]


def test_a_token_expires(client, clock):
    d = client.get("/api/round").json()
    clock.t += 599
    assert client.get(d["photo_url"]).status_code == 200
    clock.t += 2
    r = guess(client, d["token"], 10, 10)
    assert r.status_code == 410 and "expired" in r.json()["detail"] and "--round-ttl" in r.json()["detail"]
    assert client.get(d["photo_url"]).status_code == 410


def test_unknown_token_is_404(client):
    for path in ("/api/round/nope/photo",):
        assert client.get(path).status_code == 404
    r = guess(client, "not-a-token", 1, 1)
    assert r.status_code == 404 and "unknown round" in r.json()["detail"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"lon": 2.0}, 422, "lat is missing"),
        ({"lat": 2.0}, 422, "lon is missing"),
        ({"lat": "abc", "lon": 2.0}, 422, "lat must be a number"),
        ({"lat": float("nan"), "lon": 2.0}, 422, "lat must be a finite number"),
        ({"lat": "nan", "lon": 2.0}, 422, "lat must be a finite number"),
        ({"lat": 91, "lon": 2.0}, 422, "[-90, 90]"),
        ({"lat": 1, "lon": -180.5}, 422, "[-180, 180]"),
        ({"lat": "inf", "lon": 2.0}, 422, "finite"),
        ({"lat": True, "lon": 2.0}, 422, "must be a number"),
        ({"lat": [1], "lon": 2.0}, 422, "must be a number"),
        ({"lat": None, "lon": 2.0}, 422, "lat is missing"),
    ],
)
def test_bad_coordinates_get_422_and_keep_the_round(client, body, status, words):
    d = client.get("/api/round").json()
    r = client.post(f"/api/round/{d['token']}/guess", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail.splitlines()) == 1 and words in detail
    assert guess(client, d["token"], 1, 1).status_code == 200  # a refused guess does not use the token up


def test_bad_bodies_get_clear_4xx(client):
    token = client.get("/api/round").json()["token"]
    url = f"/api/round/{token}/guess"
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(content=b"[1, 2]", headers={"content-type": "application/json"}), 422, "JSON object"),
        (dict(content=b"x" * 5000, headers={"content-type": "application/json"}), 413, "too large"),
        (dict(content=b"lat=1&lon=2", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
        (dict(content=b""), 422, "lat is missing"),
    ]
    for kw, status, words in cases:
        r = client.post(url, **kw)
        assert r.status_code == status and words in r.json()["detail"], (kw, r.text)


def test_the_token_book_is_bounded(geoloc, world):
    from geosolver.serve.play import RoundBook

    book = RoundBook(ttl=60, max_rounds=3, clock=Clock())
    tokens = [book.issue(i) for i in range(5)]
    assert len(book) == 3
    for t in tokens[:2]:
        with pytest.raises(Exception, match="unknown round"):
            book.peek(t)
    assert [book.peek(t) for t in tokens[2:]] == [2, 3, 4]
    with make_client(geoloc, world["queries"].path, max_rounds=2) as c:
        first = c.get("/api/round").json()["token"]
        for _ in range(4):
            c.get("/api/round")
        assert len(play_of(c).book) == 2 and len(play_of(c).photos) <= 16
        assert guess(c, first, 1, 1).status_code == 404


def test_old_tokens_are_forgotten_long_after_expiry():
    from geosolver.serve.play import RoundBook

    clock = Clock()
    book = RoundBook(ttl=10, max_rounds=100, clock=clock)
    old = book.issue(0)
    clock.t += 15
    book.issue(1)
    assert len(book) == 2  # expired but remembered: answers 410, not 404
    clock.t += 10
    book.issue(2)
    assert len(book) == 2
    with pytest.raises(Exception, match="unknown round"):
        book.peek(old)


# ------------------------------------------------------------------------------------------------
# unreadable photos, play mode off, the page
# ------------------------------------------------------------------------------------------------
def test_unreadable_photos_are_skipped_and_none_readable_is_503(geoloc, world, caplog):
    from geosolver.store import write_store

    enc, root = world["encoder"], world["root"]
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    meta = pd.DataFrame({"id": ["a", "b"], "source": [str(root / "nope.jpg"), str(root / "broken.jpg")], "lat": [1.0, 2.0], "lon": [3.0, 4.0]})
    bad = write_store(root / "bad-queries", np.ones((2, enc.dim), np.float32) / math.sqrt(enc.dim), meta, enc.identity())
    with make_client(geoloc, bad.path) as c, caplog.at_level("WARNING", logger="geosolver.serve.play"):
        r = c.get("/api/round")
        assert r.status_code == 503
        detail = r.json()["detail"]
        assert len(detail.splitlines()) == 1 and "2 of 2 query photos could not be read" in detail
        assert "nope.jpg" in caplog.text and "broken.jpg" in caplog.text
        assert len(play_of(c).book) == 0


def test_without_play_the_routes_say_how_to_turn_it_on(geoloc):
    with make_client(geoloc) as c:
        for r in (c.get("/api/round"), c.get("/api/round/abc/photo"), c.post("/api/round/abc/guess", json={"lat": 1, "lon": 2})):
            assert r.status_code == 404 and "--play QUERIES" in r.json()["detail"]
        assert c.get("/api/play").json()["enabled"] is False
        assert c.get("/api/health").json()["play"] is False


def test_page_offers_play_mode(client):
    page = client.get("/")
    assert page.status_code == 200
    for ref in ('id="tab-play"', 'id="play-panel"', 'id="play-guess"', "static/play.js"):
        assert ref in page.text, ref
    assert client.get("/static/play.js").status_code == 200
    info = client.get("/api/play").json()
    assert info["enabled"] is True and info["queries"] == 5 and info["round_ttl_s"] == 600
    assert client.get("/api/health").json()["play"] is True
    spec = client.get("/openapi.json").json()
    assert {"/api/round", "/api/round/{token}/photo", "/api/round/{token}/guess"} <= set(spec["paths"])


def test_photo_respects_the_pixel_budget(geoloc, world):
    with make_client(geoloc, world["queries"].path, max_pixels=10_000) as c:
        for _ in range(30):  # the big twin photo is over budget: never drawn, the small ones are
            d = c.get("/api/round").json()
            assert play_of(c).ids[play_of(c).book.peek(d["token"])] not in ("g003", "q-gone")
        assert {play_of(c).ids[i] for i in play_of(c).bad} == {"g003", "q-gone"}


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("geosolver serve: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_play_with_a_missing_store_exits_2_with_one_line(world, tmp_path, capsys, monkeypatch):
    import geosolver.serve.app as app_mod

    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: pytest.fail("served despite a bad --play"))
    rc = cli_main(["serve", "--gallery", str(world["store"].path), "--model", "histogram", "--play", str(tmp_path / "nope")])
    err = _one_line_error(capsys)
    assert rc == 2 and "nope" in err and "--play" in err
    (tmp_path / "empty").mkdir()
    rc = cli_main(["serve", "--gallery", str(world["store"].path), "--model", "histogram", "--play", str(tmp_path / "empty")])
    assert rc == 2 and "not an embedding store" in _one_line_error(capsys)


def test_cli_play_with_another_encoders_store_exits_2_with_one_line(world, tmp_path, capsys, monkeypatch):
    import geosolver.serve.app as app_mod
    from geosolver.store import write_store

    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: pytest.fail("served despite a bad --play"))
    meta = world["meta"]
    write_store(tmp_path / "other", np.ones((len(meta), 512), np.float32), meta, {"name": "clip-vit-b-32", "dim": 512, "revision": "x"})
    rc = cli_main(["serve", "--gallery", str(world["store"].path), "--model", "histogram", "--play", str(tmp_path / "other")])
    err = _one_line_error(capsys)
    assert rc == 2 and "another encoder" in err and "clip-vit-b-32" in err


def test_cli_play_runs_with_its_options(world, monkeypatch, capsys):
    import geosolver.serve.app as app_mod

    seen = {}

    def fake_serve(app, log_level="info"):
        with TestClient(base_url="http://127.0.0.1", app=app) as c:
            seen["play"] = c.get("/api/play").json()
            seen["round"] = c.get("/api/round").json()

    monkeypatch.setattr(app_mod, "serve", fake_serve)
    rc = cli_main(["serve", "--gallery", str(world["store"].path), "--model", "histogram", "--play", str(world["queries"].path),
                   "--round-ttl", "42", "--port", "8124", "--allow-gallery-queries"])
    assert rc == 0
    assert seen["play"]["enabled"] and seen["play"]["round_ttl_s"] == 42 and seen["round"]["expires_in"] == 42
    assert "play mode on: 5 query photos" in capsys.readouterr().out


@pytest.mark.parametrize("same_store", [False, True])
def test_cli_play_refuses_queries_that_are_gallery_photos(world, monkeypatch, capsys, same_store):
    """The twin query is gallery photo g003: /api/locate would answer its round exactly."""
    import geosolver.serve.app as app_mod

    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: pytest.fail("served a Play store that overlaps the gallery"))
    gallery = str(world["store"].path)
    queries = gallery if same_store else str(world["queries"].path)
    rc = cli_main(["serve", "--gallery", gallery, "--model", "histogram", "--play", queries])
    err = _one_line_error(capsys)
    assert rc == 2 and "--allow-gallery-queries" in err
    assert ("is the gallery" in err) if same_store else ("1 of 5 queries share ids" in err and "'g003'" in err)


def test_play_refuses_queries_sharing_photo_sources_with_the_gallery(world, geoloc, tmp_path):
    """Other ids, same photo files: still the gallery's photos."""
    from geosolver.errors import ServeError
    from geosolver.serve.play import check_not_gallery
    from geosolver.store import EmbeddingStore, write_store

    q = world["queries"]
    meta = q.metadata.copy()
    meta["id"] = [f"other-{i}" for i in range(len(meta))]
    gmeta = world["store"].metadata.copy()
    gmeta["source"] = ["elsewhere.jpg"] * len(gmeta)
    gmeta.loc[5, "source"] = meta["source"].iloc[2]
    emb = q.embeddings(list(range(len(meta))))
    renamed = write_store(tmp_path / "q", emb, meta, q.encoder)
    gallery = write_store(tmp_path / "g", world["store"].embeddings(list(range(len(gmeta)))), gmeta, q.encoder)
    with pytest.raises(ServeError, match="1 of 5 queries share photo sources"):
        check_not_gallery(EmbeddingStore(renamed.path), EmbeddingStore(gallery.path))
    check_not_gallery(EmbeddingStore(renamed.path), world["store"])  # no shared id, no source column: fine


def test_create_app_refuses_a_query_store_sharing_gallery_ids(geoloc, world):
    from geosolver.errors import ServeError
    from geosolver.serve import create_app

    with pytest.raises(ServeError, match="1 of 5 queries share ids with the gallery"):
        create_app(geoloc, play=world["queries"].path, warmup=False)
