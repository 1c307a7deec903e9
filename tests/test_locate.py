"""Geolocator and aggregation strategies on synthetic embeddings whose geometry is known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geosolver.geo import latlon_to_xyz, random_points_on_sphere
from geosolver.store import write_store

ENC = {"name": "synthetic", "dim": 32}


def geo_signal(lat, lon, dim: int = 32, scale: float = 8.0, seed: int = 123) -> np.ndarray:
    """A smooth location-dependent embedding: random Fourier features of the 3-D unit vector.

    Nearby places (≲ 1/scale radians ≈ 800 km) get similar vectors. Shape ``(n, dim)``, unit rows.
    """
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, scale, size=(3, dim))
    b = rng.uniform(0, 2 * np.pi, size=dim)
    f = np.cos(latlon_to_xyz(lat, lon) @ w + b)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_points(n: int, n_centres: int, spread_deg: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around ``n_centres`` random centres (degrees), Gaussian spread in degrees."""
    clat, clon = random_points_on_sphere(n_centres, rng)
    c = rng.integers(0, n_centres, n)
    lat = np.clip(clat[c] + rng.normal(0, spread_deg, n), -89.0, 89.0)
    lon = (clon[c] + rng.normal(0, spread_deg, n) + 180.0) % 360.0 - 180.0
    return lat, lon


def planted_world(n_gal: int = 1500, n_q: int = 200, n_fake: int = 3, noise: float = 0.05, seed: int = 0):
    """Gallery + queries from a location signal plus noise, with planted far-away look-alikes.

    For every query, ``n_fake`` gallery items are added at random places > 3000 km away whose
    embeddings are copies of the query's most similar true gallery neighbour.

    Returns:
        ``(gal_emb, gal_meta, q_emb, q_meta)``.
    """
    from geosolver.geo import haversine

    rng = np.random.default_rng(seed)
    glat, glon = clustered_points(n_gal, 60, 1.5, rng)
    gemb = unit(geo_signal(glat, glon) + noise * rng.normal(size=(n_gal, 32)))
    qlat, qlon = clustered_points(n_q, 60, 1.5, np.random.default_rng(seed))  # same centres
    qlat = np.clip(qlat + rng.normal(0, 0.3, n_q), -89, 89)
    qemb = unit(geo_signal(qlat, qlon) + noise * rng.normal(size=(n_q, 32)))
    top = np.argmax(qemb @ gemb.T, axis=1)
    flat_, flon_, femb = [], [], []
    for i in range(n_q):
        for _ in range(n_fake):
            while True:
                la, lo = random_points_on_sphere(1, rng)
                if haversine(la[0], lo[0], qlat[i], qlon[i]) > 3000:
                    break
            flat_.append(la[0])
            flon_.append(lo[0])
            femb.append(gemb[top[i]])
    lat = np.concatenate([glat, np.asarray(flat_, float)])
    lon = np.concatenate([glon, np.asarray(flon_, float)])
    emb = np.concatenate([gemb, np.array(femb).reshape(-1, gemb.shape[1])])
    gmeta = pd.DataFrame({"id": [f"g{i}" for i in range(len(lat))], "lat": lat, "lon": lon})
    qmeta = pd.DataFrame({"id": [f"q{i}" for i in range(n_q)], "lat": qlat, "lon": qlon})
    return emb.astype(np.float32), gmeta, qemb, qmeta


def mean_geoscore(tlat, tlon, plat, plon) -> float:
    """Independent reference: the `haversine` package, Geoscore 5000·exp(-km/1492.7)."""
    from haversine import haversine as hv

    km = np.array([hv((a, b), (c, d)) for a, b, c, d in zip(tlat, tlon, plat, plon)])
    return float(np.mean(5000 * np.exp(-km / 1492.7)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    ge, gm, qe, qm = planted_world()
    return write_store(d / "g", ge, gm, ENC), qe, qm


def test_densest_beats_nn_and_weighted_mean_with_planted_look_alikes(planted):
    from geosolver.locate import Geolocator

    gallery, qe, qm = planted
    geo = Geolocator.from_store(gallery)
    score = {}
    for strategy in ("nn", "weighted-mean", "densest"):
        preds = geo.locate_embeddings(qe, k=10, strategy=strategy, with_country=False)
        score[strategy] = mean_geoscore(qm["lat"], qm["lon"], [p.lat for p in preds], [p.lon for p in preds])
    assert score["densest"] > score["nn"] + 1000, score
    assert score["densest"] > score["weighted-mean"] + 1000, score
    # the look-alikes are ≥ 3000 km away; the densest guess lands in the true neighbourhood
    assert score["densest"] > 5000 * np.exp(-300 / 1492.7) * 0.9, score


def test_aggregate_strategies_on_a_hand_made_case():
    from geosolver.locate import aggregate

    # one look-alike in Sydney is the best match; three slightly weaker ones are around Paris
    lat = np.array([[-33.87, 48.85, 48.90, 48.80]])
    lon = np.array([[151.21, 2.35, 2.30, 2.40]])
    sims = np.array([[0.90, 0.89, 0.89, 0.885]])  # Paris mass 1.68 vs Sydney 1 at t=0.02
    t, r = 0.02, 100.0
    nlat, nlon, nconf = aggregate(sims, lat, lon, "nn", t, r)
    assert (nlat[0], nlon[0]) == (-33.87, 151.21)
    dlat, dlon, dconf = aggregate(sims, lat, lon, "densest", t, r)
    assert abs(dlat[0] - 48.85) < 0.1 and abs(dlon[0] - 2.35) < 0.1
    w = np.exp(sims[0] / t) / np.exp(sims[0] / t).sum()  # independent softmax
    assert dconf[0] == pytest.approx(w[1:].sum())
    assert nconf[0] == pytest.approx(w[0])
    wlat, wlon, _ = aggregate(sims, lat, lon, "weighted-mean", t, r)
    from haversine import haversine as hv

    # dragged between the two places: far from both
    assert hv((wlat[0], wlon[0]), (48.85, 2.35)) > 1000 and hv((wlat[0], wlon[0]), (-33.87, 151.21)) > 1000


def test_weighted_mean_across_the_antimeridian():
    from geosolver.locate import aggregate

    lat = np.array([[10.0, -10.0, 0.0]])
    lon = np.array([[179.0, -179.0, 179.5]])
    plat, plon, conf = aggregate(np.array([[0.8, 0.8, 0.8]]), lat, lon, "weighted-mean", 0.05, 2000.0)
    assert abs(abs(plon[0]) - 180.0) < 1.0 and abs(plat[0]) < 1.0
    assert conf[0] == pytest.approx(1.0)


def test_leave_one_out_never_returns_the_query(tmp_path):
    from geosolver.locate import Geolocator

    rng = np.random.default_rng(5)
    lat, lon = clustered_points(300, 10, 2.0, rng)
    emb = unit(geo_signal(lat, lon) + 0.05 * rng.normal(size=(300, 32)))
    meta = pd.DataFrame({"id": [f"p{i}" for i in range(300)], "lat": lat, "lon": lon})
    geo = Geolocator.from_store(write_store(tmp_path / "g", emb, meta, ENC))
    own = geo.locate_embeddings(emb[:50], k=5, strategy="nn", with_country=False)
    assert [p.neighbours[0]["id"] for p in own] == list(meta["id"][:50])  # without exclusion: itself
    loo = geo.locate_embeddings(emb[:50], k=5, strategy="nn", exclude_ids=list(meta["id"][:50]), with_country=False)
    for i, p in enumerate(loo):
        ids = [n["id"] for n in p.neighbours]
        assert f"p{i}" not in ids and len(ids) == 5
        assert ids == [n["id"] for n in own[i].neighbours[1:]] + ids[4:]  # the next best move up


def test_prediction_fields_country_and_osm_link(tmp_path):
    from geosolver.locate import Geolocator

    rng = np.random.default_rng(6)
    lat = np.r_[48.85 + rng.normal(0, 0.1, 20), -33.87 + rng.normal(0, 0.1, 20)]
    lon = np.r_[2.35 + rng.normal(0, 0.1, 20), 151.21 + rng.normal(0, 0.1, 20)]
    emb = unit(geo_signal(lat, lon) + 0.01 * rng.normal(size=(40, 32)))
    meta = pd.DataFrame({"id": [f"p{i}" for i in range(40)], "lat": lat, "lon": lon})
    geo = Geolocator.from_store(write_store(tmp_path / "g", emb, meta, ENC))
    p = geo.locate_embeddings(unit(geo_signal(np.array([48.86]), np.array([2.34]))), k=5)[0]
    assert p.country == "FR" and abs(p.lat - 48.86) < 1 and 0 <= p.confidence <= 1
    assert len(p.neighbours) == 5 and all(n["lat"] > 40 for n in p.neighbours)
    sims = [n["similarity"] for n in p.neighbours]
    assert sims == sorted(sims, reverse=True)
    d = p.to_dict()
    assert d["osm_url"].startswith(f"https://www.openstreetmap.org/?mlat={p.lat:.5f}&mlon={p.lon:.5f}")
    import json

    json.dumps(d)  # JSON-ready


class FakeEncoder:
    """Stands in for geosolver.encoders: embeds an image as the location signal of its colour."""

    def __init__(self, name: str = "synthetic", dim: int = 32):
        self.name, self.dim = name, dim
        self.calls = []

    def identity(self) -> dict:
        return {"name": self.name, "dim": self.dim, "revision": None}

    def embed_images(self, images, batch_size=32, tta=None):
        self.calls.append((len(images), tta))
        rgb = np.array([np.asarray(im.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for im in images])
        lat, lon = rgb[:, 0] / 255 * 120 - 60, rgb[:, 1] / 255 * 340 - 170
        return unit(geo_signal(lat, lon)[:, : self.dim])


def _colour_for(lat, lon):
    return (int(round((lat + 60) / 120 * 255)), int(round((lon + 170) / 340 * 255)), 0)


@pytest.fixture()
def photo_gallery(tmp_path):
    rng = np.random.default_rng(7)
    lat, lon = clustered_points(400, 20, 1.0, rng)
    lat = np.clip(lat, -59, 59)
    lon = np.clip(lon, -169, 169)
    meta = pd.DataFrame({"id": [f"p{i}" for i in range(400)], "lat": lat, "lon": lon})
    return write_store(tmp_path / "g", unit(geo_signal(lat, lon)), meta, ENC), lat, lon


def test_locate_photos_with_an_encoder_object(photo_gallery, tmp_path):
    from PIL import Image

    from geosolver.locate import Geolocator

    store, lat, lon = photo_gallery
    enc = FakeEncoder()
    geo = Geolocator.from_store(store, encoder=enc)
    f = tmp_path / "a.png"
    Image.new("RGB", (16, 16), _colour_for(lat[0], lon[0])).save(f)
    img = Image.new("RGB", (16, 16), _colour_for(lat[1], lon[1]))
    preds = geo.locate([str(f), img], k=5, strategy="densest", tta="flip", with_country=False)
    assert enc.calls == [(2, "flip")]
    for p, i in zip(preds, (0, 1)):  # colour quantisation: within a degree or so of the truth
        assert mean_geoscore([lat[i]], [lon[i]], [p.lat], [p.lon]) > 4500


def test_refuses_other_encoder_empty_gallery_and_wrong_dim(photo_gallery, tmp_path):
    from geosolver.locate import Geolocator, LocateError

    store, _, _ = photo_gallery
    with pytest.raises(LocateError, match="another encoder.*name differs: 'other' vs 'synthetic'"):
        Geolocator.from_store(store, encoder=FakeEncoder(name="other"))
    empty = write_store(tmp_path / "e", np.zeros((0, 32), np.float32), pd.DataFrame({"id": [], "lat": [], "lon": []}), ENC)
    with pytest.raises(LocateError, match="empty"):
        Geolocator.from_store(empty)
    geo = Geolocator.from_store(store)
    with pytest.raises(LocateError, match=r"shape \(n, 32\).*got \(2, 16\)"):
        geo.locate_embeddings(np.ones((2, 16), np.float32))
    with pytest.raises(LocateError, match="unknown strategy"):
        geo.locate_embeddings(np.ones((1, 32), np.float32), strategy="median")


def test_cli_locate_reports_unreadable_photos_and_continues(photo_gallery, tmp_path, monkeypatch, capsys):
    from PIL import Image

    import geosolver.locate as gl
    from geosolver.cli import main

    store, lat, lon = photo_gallery
    monkeypatch.setattr(gl, "_load_encoder", lambda name: FakeEncoder())
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), _colour_for(lat[3], lon[3])).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    rc = main(["locate", str(bad), str(good), "--gallery", str(store.path), "--json", "--k", "5"])
    out, err = capsys.readouterr()
    assert rc != 0 and "bad.jpg" in err
    import json

    rec = json.loads(out.strip().splitlines()[0])
    assert rec["photo"] == str(good) and len(rec["neighbours"]) == 5
    assert mean_geoscore([lat[3]], [lon[3]], [rec["lat"]], [rec["lon"]]) > 4500
    assert main(["locate", str(good), "--gallery", str(store.path)]) == 0
    text = capsys.readouterr().out
    assert "openstreetmap.org" in text and "confidence" in text


def test_locate_photos_with_the_real_encoder_path(tiny_clip_dir, tmp_path, capsys):
    """encoder=None: the encoder named in the gallery manifest is loaded (geosolver.encoders)."""
    from PIL import Image

    from geosolver.cli import main
    from geosolver.encoders import load_encoder
    from geosolver.locate import Geolocator

    rng = np.random.default_rng(8)
    paths = []
    for i in range(12):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    enc = load_encoder(tiny_clip_dir)
    emb = enc.embed_images(paths, batch_size=4)
    lat, lon = np.linspace(-50, 50, 12), np.linspace(-170, 170, 12)
    meta = pd.DataFrame({"id": [f"img{i}" for i in range(12)], "lat": lat, "lon": lon})
    gallery = write_store(tmp_path / "g", emb, meta, enc.identity())
    geo = Geolocator.from_store(gallery)  # no encoder given: loaded lazily from the manifest
    preds = geo.locate(paths[3:5], k=3, strategy="nn", with_country=False)
    for p, i in zip(preds, (3, 4)):
        assert p.neighbours[0]["id"] == f"img{i}" and p.neighbours[0]["similarity"] > 0.99
        assert (p.lat, p.lon) == pytest.approx((lat[i], lon[i]), abs=1e-6)
    assert main(["locate", paths[7], "--gallery", str(gallery.path), "--strategy", "nn", "--tta", "flip"]) == 0
    assert "img7" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# the one vote: Neighbours.vote, against hand-computed answers
# ------------------------------------------------------------------------------------------------
def _neighbours(sims, lat, lon):
    """A one-query Neighbours from lists (rows 0..k-1)."""
    from geosolver.locate import Neighbours

    k = len(sims)
    return Neighbours(
        np.array([sims], np.float32), np.arange(k, dtype=np.int64)[None, :], np.array([lat], float), np.array([lon], float)
    )


KM_PER_DEG = 2 * np.pi * 6371.0 / 360.0  # 111.19 km per degree of longitude on the equator


def test_densest_uses_the_full_radius_not_half_of_it():
    """Equator, radius 100 km: A (lon 0), B (lon 0.6, 67 km from A and C), C (lon 1.2) and a
    far look-alike D (lon 90) that is the single best match. At 100 km B's neighbourhood is
    {A, B, C}: weights ∝ e^17.4 + e^17.6 + e^17.4 ≈ 116e6 beat D's e^18 ≈ 66e6, and the
    symmetric (wA = wC) mean is B's spot, lon 0.6. At 50 km every point is alone and D would win."""
    assert 0.6 * KM_PER_DEG < 100 < 1.2 * KM_PER_DEG and 0.6 * KM_PER_DEG > 50
    nb = _neighbours([0.90, 0.88, 0.87, 0.87], [0, 0, 0, 0], [90.0, 0.6, 0.0, 1.2])
    v = nb.vote("densest", temperature=0.05, radius_km=100.0)
    assert v.lat[0] == pytest.approx(0.0, abs=1e-9) and v.lon[0] == pytest.approx(0.6, abs=1e-9)
    w = np.exp(np.array([18.0, 17.6, 17.4, 17.4]))  # softmax by hand: e^(s / 0.05)
    assert v.confidence[0] == pytest.approx(w[1:].sum() / w.sum(), rel=1e-5)  # A, B, C within 100 km of lon 0.6


def test_densest_answers_the_mean_of_the_neighbourhood_not_the_winning_point():
    """Equal similarities; A (lon 0) and B (lon 0.8, 89 km away) are each other's only
    neighbours within 100 km, C and D are far. Whichever of A, B wins, the guess is the equal-weight
    spherical mean of {A, B}: the equator at lon 0.4, 44 km from each (confidence 1/2)."""
    nb = _neighbours([0.8, 0.8, 0.8, 0.8], [0, 0, 0, 0], [0.0, 0.8, 60.0, 120.0])
    v = nb.vote("densest", temperature=0.05, radius_km=100.0)
    assert v.lat[0] == pytest.approx(0.0, abs=1e-9) and v.lon[0] == pytest.approx(0.4, abs=1e-9)
    assert v.confidence[0] == pytest.approx(0.5, rel=1e-6)


def test_weighted_mean_weighs_by_softmax_similarity():
    """Two equator points 90° apart with softmax weights 3:1 (sims differ by T·ln 3): the mean
    direction is (3·(1,0,0) + 1·(0,1,0)), i.e. lon atan(1/3) = 18.43°, not the unweighted 45°."""
    t = 0.05
    nb = _neighbours([0.9, 0.9 - t * np.log(3.0)], [0.0, 0.0], [0.0, 90.0])
    v = nb.vote("weighted-mean", temperature=t, radius_km=500.0)
    assert v.lat[0] == pytest.approx(0.0, abs=1e-9)
    assert v.lon[0] == pytest.approx(np.degrees(np.arctan(1 / 3)), abs=1e-4)  # 18.4349°
    # only the heavier point lies within 2500 km of the guess (18.4° = 2050 km; 71.6° away from the other)
    assert nb.vote("weighted-mean", temperature=t, radius_km=2500.0).confidence[0] == pytest.approx(0.75, rel=1e-5)


def _hand_mean(weights, lats, lons):
    """The weighted spherical mean by hand (plain math): the direction of sum w·(x, y, z)."""
    x = sum(w * math.cos(math.radians(a)) * math.cos(math.radians(o)) for w, a, o in zip(weights, lats, lons))
    y = sum(w * math.cos(math.radians(a)) * math.sin(math.radians(o)) for w, a, o in zip(weights, lats, lons))
    z = sum(w * math.sin(math.radians(a)) for w, a, o in zip(weights, lats, lons))
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def test_weighted_mean_of_three_neighbours_by_hand():
    """sims 0.9 / 0.8 / 0.7 at T = 0.05: softmax weights e^18 : e^16 : e^14, normalised by hand;
    the guess is the direction of the weighted sum of the three unit vectors."""
    sims, lat, lon = [0.9, 0.8, 0.7], [40.0, 10.0, -20.0], [10.0, 60.0, 100.0]
    e = [math.exp(s / 0.05) for s in sims]
    w = [x / sum(e) for x in e]  # 0.8668, 0.1173, 0.0159
    want_lat, want_lon = _hand_mean(w, lat, lon)
    v = _neighbours(sims, lat, lon).vote("weighted-mean", temperature=0.05, radius_km=500.0)
    assert v.lat[0] == pytest.approx(want_lat, abs=1e-4) and v.lon[0] == pytest.approx(want_lon, abs=1e-4)  # sims are float32
    assert 30 < want_lat < 40 and 10 < want_lon < 20  # pulled from the first point towards the second


def test_vote_k_uses_only_the_k_most_similar():
    """k = 2 of (0.9, 0.8, 0.7): the third neighbour has no say; nn is the first whatever k;
    its confidence is its softmax weight among the k voters (within 500 km: only itself)."""
    nb = _neighbours([0.9, 0.8, 0.7], [1.0, 2.0, 50.0], [10.0, 20.0, 80.0])
    e18, e16 = math.exp(0.9 / 0.05), math.exp(0.8 / 0.05)
    want_lat, want_lon = _hand_mean([e18, e16], [1.0, 2.0], [10.0, 20.0])
    v = nb.vote("weighted-mean", k=2, temperature=0.05, radius_km=500.0)
    assert v.lat[0] == pytest.approx(want_lat, abs=1e-4) and v.lon[0] == pytest.approx(want_lon, abs=1e-4)  # sims are float32
    h = nb.head(2)
    assert h.k == 2 and h.lat.tolist() == [[1.0, 2.0]] and nb.head(10) is nb
    nn = nb.vote("nn", k=2, temperature=0.05, radius_km=500.0)
    assert (nn.lat[0], nn.lon[0]) == (1.0, 10.0)
    assert nn.confidence[0] == pytest.approx(e18 / (e18 + e16), rel=1e-6)  # 0.8808 (sims held as float32)


def test_densest_counts_a_neighbour_exactly_at_the_radius():
    """Equator: A (lon 0) and B (lon 1) equally similar, C (lon 90) more similar than either but
    less than both. With the radius exactly |AB|, A and B are each other's neighbours: the guess
    is their equal-weight mean, lon 0.5 (a radius test with ``<`` would answer C); likewise B counts
    towards the confidence of a guess at A."""
    from geosolver.geo import haversine

    radius = float(haversine(np.array([[[0.0], [0.0], [0.0]]]), np.array([[[90.0], [0.0], [1.0]]]),
                             np.array([[[0.0, 0.0, 0.0]]]), np.array([[[90.0, 0.0, 1.0]]]), check=False)[0, 1, 2])
    assert radius == pytest.approx(6371.0 * math.pi / 180, rel=1e-9)  # the input: one degree on the equator
    nb = _neighbours([0.82, 0.80, 0.80], [0.0, 0.0, 0.0], [90.0, 0.0, 1.0])  # e^16.4 < 2·e^16
    v = nb.vote("densest", temperature=0.05, radius_km=radius)
    assert v.lat[0] == pytest.approx(0.0, abs=1e-9) and v.lon[0] == pytest.approx(0.5, abs=1e-9)
    # nn answers A (lon 0); its confidence, the weight within the radius of the guess, counts B at exactly |AB|
    nn = _neighbours([0.82, 0.80, 0.80], [0.0, 0.0, 0.0], [0.0, 1.0, 90.0]).vote("nn", temperature=0.05, radius_km=radius)
    a, b = math.exp(0.82 / 0.05), math.exp(0.80 / 0.05)
    assert (nn.lon[0], nn.confidence[0]) == (0.0, pytest.approx((a + b) / (a + 2 * b), rel=1e-6))


def test_neighbours_search_returns_the_exact_top_rows():
    from geosolver.index import build_index
    from geosolver.locate import Neighbours

    rng = np.random.default_rng(3)
    lat, lon = clustered_points(60, 5, 1.0, rng)
    emb = unit(geo_signal(lat, lon))
    meta = pd.DataFrame({"id": [f"p{i}" for i in range(60)], "lat": lat, "lon": lon})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = write_store(f"{d}/g", emb, meta, ENC)
        index = build_index(store, progress=False)
        got = Neighbours.search(index, emb[:4], 3, lat, lon, exclude_rows=[[0], [], [2], [3]])
    assert got.rows.shape == (4, 3) and 0 not in got.rows[0] and got.rows[1, 0] == 1
    np.testing.assert_array_equal(got.lat, lat[got.rows])  # coordinates of the rows returned
    best = np.argsort(-(emb[:4] @ emb.T), axis=1)  # exact search by hand
    assert got.rows[1].tolist() == best[1, :3].tolist()
    assert got.rows[0].tolist() == [j for j in best[0] if j != 0][:3]  # leave-one-out: the next three


def test_from_store_takes_an_encoder_spec_and_a_device(tiny_clip_dir, tmp_path):
    from geosolver.encoders import EncoderSpec, load_encoder
    from geosolver.locate import Geolocator, LocateError

    enc = load_encoder(tiny_clip_dir, device="cpu")
    emb = np.eye(4, enc.dim, dtype=np.float32)
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(4)], "lat": [0.0, 1, 2, 3], "lon": [0.0, 1, 2, 3]})
    gallery = write_store(tmp_path / "g", emb, meta, enc.identity())
    geo = Geolocator.from_store(gallery, encoder=EncoderSpec(tiny_clip_dir, device="cuda:7"), device="cpu")
    assert geo.encoder.spec.device == "cpu"  # device= wins over the spec's
    lazy = Geolocator.from_store(gallery, device="cpu")  # the manifest's encoder, loaded on first use
    assert lazy.encoder.spec.device == "cpu"
    with pytest.raises(LocateError, match="already loaded"):
        Geolocator.from_store(gallery, encoder=enc, device="cpu")
