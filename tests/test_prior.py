"""The text prior fused with the kNN vote (geosolver.prior, locate.aggregate(prior=...)).

Constructed neighbourhoods where the right answer is known by construction:

* a planted look-alike — the single most similar neighbour, in Brazil — that a text model sure
  of Norway must overrule in favour of weaker neighbours around Oslo;
* a strong, consistent neighbourhood around Oslo that a text model preferring Sweden must NOT
  override (the prior only reweights neighbours; it cannot outvote eight of them with one);
* λ = 0 is exactly the plain vote.
"""

from __future__ import annotations

import numpy as np
import pytest
from haversine import haversine as hv

from geosolver.errors import LocateError
from geosolver.locate import Neighbours, aggregate
from geosolver.prior import neighbour_groups, neighbour_prior, neighbour_probs, prior_factors

OSLO = (59.9139, 10.7522)
BRASILIA = (-15.7939, -47.8828)
STOCKHOLM = (59.3293, 18.0686)


def km(a, b) -> float:
    return hv(a, b)


def lookalike_case():
    """4 neighbours: a Brazilian look-alike at 0.95, three around Oslo at 0.80."""
    sims = np.array([[0.95, 0.80, 0.80, 0.80]])
    lat = np.array([[BRASILIA[0], 59.91, 59.95, 59.90]])
    lon = np.array([[BRASILIA[1], 10.75, 10.80, 10.70]])
    keys = np.array(["NO", "BR", "SE"], dtype=object)
    probs = np.array([[0.90, 0.01, 0.09]])  # the text model is sure of Norway
    return sims, lat, lon, keys, probs


def test_neighbour_groups_are_the_countries_of_the_neighbours():
    _, lat, lon, _, _ = lookalike_case()
    assert neighbour_groups(lat, lon).tolist() == [["BR", "NO", "NO", "NO"]]
    regions = neighbour_groups(lat, lon, by="region")
    assert regions[0, 0].startswith("BR/") and regions[0, 1] == "NO/Oslo"


def test_neighbour_probs_look_up_each_group_and_give_unknown_groups_the_uniform_probability():
    keys = np.array(["NO", "BR", "SE", "FI"], dtype=object)
    probs = np.array([[0.5, 0.1, 0.3, 0.1], [0.1, 0.7, 0.1, 0.1]])
    groups = np.array([["SE", "NO", ""], ["BR", "XX", "FI"]], dtype=object)
    got = neighbour_probs(probs, keys, groups)
    np.testing.assert_allclose(got, [[0.3, 0.5, 0.25], [0.7, 0.25, 0.1]])
    np.testing.assert_allclose(neighbour_prior(probs, keys, groups, weight=2.0, floor=1e-4), (got + 1e-4) ** 2)


@pytest.mark.parametrize("strategy", ["nn", "weighted-mean", "densest"])
def test_a_planted_lookalike_wins_without_the_prior_and_loses_with_it(strategy):
    sims, lat, lon, keys, probs = lookalike_case()
    plain = aggregate(sims, lat, lon, strategy, temperature=0.05, radius_km=500)
    factors = neighbour_prior(probs, keys, neighbour_groups(lat, lon))
    fused = aggregate(sims, lat, lon, strategy, temperature=0.05, radius_km=500, prior=factors)
    guess_plain = (plain[0][0], plain[1][0])
    guess_fused = (fused[0][0], fused[1][0])
    if strategy != "weighted-mean":  # a weighted mean of two continents lands in between
        assert km(guess_plain, BRASILIA) < 50, "setup: the look-alike must win the plain vote"
    assert km(guess_plain, OSLO) > 2000
    # weighted-mean keeps ~7 % of the fused mass on the look-alike: pulled a few hundred km off Oslo
    assert km(guess_fused, OSLO) < (600 if strategy == "weighted-mean" else 50)
    if strategy == "nn":
        assert guess_fused == (59.91, 10.75)  # the most similar Norwegian neighbour
    assert fused[2][0] > 0.9  # the fused mass agrees with the guess


def test_a_strong_consistent_neighbourhood_survives_a_text_model_that_prefers_a_neighbouring_country():
    # eight neighbours around Oslo at 0.90, one in Stockholm at 0.85; the text model says Sweden
    n_no = 8
    sims = np.array([[0.90] * n_no + [0.85]])
    lat = np.array([[59.91 + 0.01 * i for i in range(n_no)] + [STOCKHOLM[0]]])
    lon = np.array([[10.75] * n_no + [STOCKHOLM[1]]])
    keys = np.array(["SE", "NO"], dtype=object)
    probs = np.array([[0.6, 0.3]])
    factors = neighbour_prior(probs, keys, neighbour_groups(lat, lon))
    for strategy in ("nn", "densest"):
        la, lo, _ = aggregate(sims, lat, lon, strategy, temperature=0.05, radius_km=300, prior=factors)
        assert km((la[0], lo[0]), OSLO) < 50, strategy
    # ... but the same text model does decide a close call: one Norwegian neighbour against one Swedish
    la, lo, _ = aggregate(np.array([[0.86, 0.85]]), lat[:, [0, -1]], lon[:, [0, -1]], "nn", prior=factors[:, [0, -1]])
    assert km((la[0], lo[0]), STOCKHOLM) < 1


def test_prior_weight_zero_is_exactly_the_plain_vote_and_a_larger_weight_trusts_the_text_more():
    sims, lat, lon, keys, probs = lookalike_case()
    groups = neighbour_groups(lat, lon)
    for strategy in ("nn", "weighted-mean", "densest"):
        plain = aggregate(sims, lat, lon, strategy)
        zero = aggregate(sims, lat, lon, strategy, prior=neighbour_prior(probs, keys, groups, weight=0.0))
        for a, b in zip(plain, zero):
            np.testing.assert_array_equal(a, b)  # bit for bit, not merely close
    # a mild prior (p = 0.2 vs 0.1) does not overrule the look-alike at λ = 1 but does at λ = 8
    mild = np.array([[0.2, 0.1, 0.7]])
    la, lo, _ = aggregate(sims, lat, lon, "densest", prior=neighbour_prior(mild, keys, groups, weight=1.0))
    assert km((la[0], lo[0]), BRASILIA) < 50
    la, lo, _ = aggregate(sims, lat, lon, "densest", prior=neighbour_prior(mild, keys, groups, weight=8.0))
    assert km((la[0], lo[0]), OSLO) < 50


def test_neighbours_vote_cuts_the_prior_to_the_best_k():
    sims, lat, lon, keys, probs = lookalike_case()
    nb = Neighbours(sims.astype(np.float32), np.arange(4)[None, :], lat, lon)
    factors = neighbour_prior(probs, keys, neighbour_groups(lat, lon))
    v1 = nb.vote("densest", k=1, prior=factors)  # only the look-alike is left to vote
    assert km((v1.lat[0], v1.lon[0]), BRASILIA) < 1
    v2 = nb.vote("densest", k=2, prior=factors)  # the look-alike's own factor (BR: 0.01) must come along
    assert km((v2.lat[0], v2.lon[0]), OSLO) < 50
    v4 = nb.vote("densest", k=4, prior=factors)
    assert km((v4.lat[0], v4.lon[0]), OSLO) < 50


@pytest.mark.parametrize(
    "prior, match",
    [
        (np.ones((1, 3)), "shaped like sims"),
        (np.array([[1.0, np.nan, 1.0, 1.0]]), "finite"),
        (np.array([[1.0, -1.0, 1.0, 1.0]]), ">= 0"),
    ],
)
def test_a_malformed_prior_is_refused(prior, match):
    sims, lat, lon, _, _ = lookalike_case()
    with pytest.raises(LocateError, match=match):
        aggregate(sims, lat, lon, "densest", prior=prior)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_a_bad_prior_weight_is_refused(weight):
    with pytest.raises(LocateError, match="prior weight"):
        prior_factors(np.ones((1, 2)), weight)


def test_group_keys_that_do_not_fit_the_probabilities_are_refused():
    with pytest.raises(LocateError, match="do not fit"):
        neighbour_probs(np.ones((1, 3)) / 3, np.array(["NO", "SE"]), np.array([["NO"]], dtype=object))


# ----------------------------------------------------------------------------------------------
# end to end: a tiny CLIP's text tower, a gallery store, the Geolocator, the CLI
# ----------------------------------------------------------------------------------------------
def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _at_cosine(q: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` to the unit vector ``q``."""
    u = rng.standard_normal(q.shape)
    u = u - (u @ q) * q
    return _unit(cos * q + np.sqrt(1 - cos**2) * _unit(u))


@pytest.fixture()
def planted(tiny_clip_dir, tmp_path, monkeypatch):
    """A query whose embedding is the tiny CLIP's text embedding of "A Street View photo in Norway."
    (so its text model believes Norway), a look-alike (cosine 1) in the country that text model
    rates lowest, three weaker neighbours (cosine 0.9) at Norway's representative point and 40
    unrelated gallery rows."""
    from geosolver.encoders import load_encoder
    from geosolver.store import write_store
    from geosolver.zeroshot import ZeroShot, text_embeddings

    import pandas as pd

    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    enc = load_encoder(tiny_clip_dir)
    zs = ZeroShot(enc, level="countries", temperature=0.01)
    labels = zs.labels
    no = int(np.flatnonzero(labels.cc == "NO")[0])
    q = text_embeddings(enc, labels)[no]
    p = zs.probs(q[None])[0]
    assert int(np.argmax(p)) == no  # setup: the text model believes Norway
    far = int(np.argmin(p))
    rng = np.random.default_rng(0)
    emb = [q] + [_at_cosine(q, 0.9, rng) for _ in range(3)] + [_unit(rng.standard_normal(q.shape)) for _ in range(40)]
    lat = [labels.lat[far]] + [labels.lat[no]] * 3 + list(rng.uniform(-60, 70, 40))
    lon = [labels.lon[far]] + [labels.lon[no]] * 3 + list(rng.uniform(-180, 180, 40))
    meta = pd.DataFrame({"id": [f"g{i}" for i in range(len(emb))], "lat": lat, "lon": lon})
    store = write_store(tmp_path / "gallery", np.stack(emb), meta, enc.identity())
    return {"enc": enc, "q": q, "store": store, "no": (labels.lat[no], labels.lon[no]),
            "far": (labels.lat[far], labels.lon[far]), "far_cc": str(labels.cc[far]), "dir": tiny_clip_dir}


def test_the_geolocator_text_prior_overrules_a_lookalike_in_a_country_the_text_model_rules_out(planted):
    from geosolver.locate import Geolocator

    geo = Geolocator.from_store(planted["store"], encoder=planted["enc"])
    plain = geo.locate_embeddings(planted["q"][None], k=4, strategy="densest")[0]
    assert km((plain.lat, plain.lon), planted["far"]) < 1 and plain.text_prior == []
    prior = geo.text_prior(temperature=0.01)
    fused = geo.locate_embeddings(planted["q"][None], k=4, strategy="densest", prior=prior)[0]
    assert km((fused.lat, fused.lon), planted["no"]) < 1
    assert fused.country == "NO"
    assert fused.text_prior[0]["group"] == "NO" and fused.text_prior[0]["name"] == "Norway"
    assert [t["probability"] for t in fused.text_prior] == sorted((t["probability"] for t in fused.text_prior), reverse=True)
    off = geo.locate_embeddings(planted["q"][None], k=4, strategy="densest", prior=geo.text_prior(temperature=0.01, weight=0.0))[0]
    assert (off.lat, off.lon) == (plain.lat, plain.lon)


def test_evaluate_reports_knn_fused_and_zero_shot_rows_from_one_run(planted, tmp_path):
    import pandas as pd

    from geosolver.evaluate import evaluate
    from geosolver.store import write_store

    # one query: the planted one, truly taken 0.1° north of Norway's representative point (11 km)
    truth = (planted["no"][0] + 0.1, planted["no"][1])
    meta = pd.DataFrame({"id": ["q0"], "lat": [truth[0]], "lon": [truth[1]]})
    queries = write_store(tmp_path / "queries", planted["q"][None], meta, planted["enc"].identity())
    res = evaluate(queries, planted["store"], strategies=["densest"], ks=[4], priors=["none", "text"], prior_weight=[0.0, 1.0],
                   zero_shot="countries", text_temperature=0.01, bootstrap=0, out=tmp_path / "run", plots=False)
    rows = {(r["strategy"], r["prior"], r["prior_weight"] if r["prior_weight"] == r["prior_weight"] else None): r for r in res["rows"]}
    far_km, near_km = km(planted["far"], truth), km(planted["no"], truth)
    assert rows[("densest", "none", None)]["mean_km"] == pytest.approx(far_km, rel=1e-5)
    assert rows[("densest", "text", 0.0)]["mean_km"] == pytest.approx(far_km, rel=1e-5)  # λ = 0: the plain vote
    assert rows[("densest", "text", 1.0)]["mean_km"] == pytest.approx(near_km, rel=1e-5)
    assert rows[("zero-shot-countries", "none", None)]["mean_km"] == pytest.approx(near_km, rel=1e-5)  # Norway's point
    assert res["best"]["mean_km"] == pytest.approx(near_km, rel=1e-5) and not res["warnings"]
    md = (tmp_path / "run" / "metrics.md").read_text()
    assert "zero-shot-countries" in md and "prior_weight" in md
    preds = pd.read_parquet(tmp_path / "run" / "predictions.parquet")
    assert set(preds["strategy"]) >= {"densest", "zero-shot-countries", "random", "oracle"}


def test_cli_locate_zero_shot_prints_the_top_places_and_json(planted, tmp_path, capsys):
    import json

    from PIL import Image

    from geosolver.cli import main as cli_main

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (120, 160, 60)).save(photo)
    assert cli_main(["locate", str(photo), "--zero-shot", "countries", "--model", planted["dir"], "--show", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()[:1].isdigit() and "." in ln]
    assert "zero-shot countries" in out and len(lines) == 3
    probs = [float(ln.split()[1]) for ln in lines]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    assert cli_main(["locate", str(photo), "--zero-shot", "countries", "--model", planted["dir"], "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["photo"] == str(photo) and len(d["top"]) == 5 and d["top"][0]["name"] == d["name"]
    assert abs(sum(t["probability"] for t in d["top"])) <= 1 + 1e-9


def test_cli_locate_prior_text_fuses_and_reports_the_text_top(planted, tmp_path, capsys):
    """--prior text through the CLI on a real photo: the look-alike case is built around the photo's own embedding."""
    import json

    import pandas as pd
    from PIL import Image

    from geosolver.cli import main as cli_main
    from geosolver.store import write_store

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (120, 160, 60)).save(photo)
    enc = planted["enc"]
    q = enc.embed_images([Image.open(photo)])[0]
    from geosolver.zeroshot import ZeroShot

    zs = ZeroShot(enc, level="countries", temperature=0.001)
    p = zs.probs(q[None])[0]
    best, worst = int(np.argmax(p)), int(np.argmin(p))
    rng = np.random.default_rng(1)
    emb = np.stack([q] + [_at_cosine(q, 0.9, rng) for _ in range(3)])
    lat = [zs.labels.lat[worst]] + [zs.labels.lat[best]] * 3
    lon = [zs.labels.lon[worst]] + [zs.labels.lon[best]] * 3
    write_store(tmp_path / "g2", emb, pd.DataFrame({"id": list("abcd"), "lat": lat, "lon": lon}), enc.identity())
    base = ["locate", str(photo), "--gallery", str(tmp_path / "g2"), "--model", planted["dir"], "--k", "4", "--json"]
    assert cli_main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli_main(base + ["--prior", "text", "--text-temperature", "0.001"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert km((plain["lat"], plain["lon"]), (zs.labels.lat[worst], zs.labels.lon[worst])) < 1
    assert km((fused["lat"], fused["lon"]), (zs.labels.lat[best], zs.labels.lon[best])) < 1
    assert fused["text_prior"][0]["group"] == zs.labels.cc[best]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["locate", "P"], "--gallery STORE"),
        (["locate", "P", "--gallery", "G", "--zero-shot", "countries"], "drop --gallery"),
        (["locate", "P", "--zero-shot", "countries", "--hierarchical"], "regions or cities"),
        (["locate", "P", "--gallery", "G", "--hierarchical"], "--zero-shot only"),
        (["locate", "P", "--zero-shot", "countries", "--prior", "text"], "with --zero-shot the text model alone"),
        (["locate", "P", "--gallery", "G", "--prompt", "x {country}"], "need --prior text"),
        (["locate", "P", "--gallery", "G", "--prior-weight", "2"], "add --prior text"),
        (["locate", "P", "--gallery", "G", "--prior-by", "region"], "add --prior text"),
        (["evaluate", "--queries", "Q", "--gallery", "G", "--out", "O", "--prior-weight", "0.5,1"], "add --prior text"),
    ],
)
def test_cli_locate_option_combinations_that_mean_nothing_get_one_line(argv, words, capsys):
    from geosolver.cli import main as cli_main

    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_zero_shot_and_text_prior_with_an_encoder_without_a_text_tower_get_one_line(tmp_path, capsys):
    import pandas as pd
    from PIL import Image

    from geosolver.cli import main as cli_main
    from geosolver.encoders import load_encoder
    from geosolver.store import write_store

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (10, 20, 30)).save(photo)
    enc = load_encoder("histogram")
    rng = np.random.default_rng(0)
    write_store(tmp_path / "g", rng.standard_normal((3, enc.dim)).astype(np.float32),
                pd.DataFrame({"id": list("abc"), "lat": [0.0, 10.0, 20.0], "lon": [0.0, 10.0, 20.0]}), enc.identity())
    for argv in (["locate", str(photo), "--zero-shot", "countries", "--model", "histogram"],
                 ["locate", str(photo), "--gallery", str(tmp_path / "g"), "--prior", "text"],
                 ["evaluate", "--queries", str(tmp_path / "g"), "--gallery", str(tmp_path / "g"), "--prior", "text",
                  "--out", str(tmp_path / "run")]):
        rc = cli_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, argv
        assert len([ln for ln in err if "error" in ln]) == 1 and "text tower" in err[-1] and "histogram" in err[-1], err
    assert not (tmp_path / "run").exists()


def test_prior_by_region_looks_up_each_neighbours_region_probability_not_its_countrys(planted):
    """Two neighbours in one country (Norway) but different regions (Oslo, Bergen's) must get their
    own regions' probabilities: the sums of the zero-shot label probabilities of each region's labels."""
    from geosolver.locate import Geolocator
    from geosolver.prior import LocationPrior

    geo = Geolocator.from_store(planted["store"], encoder=planted["enc"])
    prior = geo.text_prior(by="region", temperature=0.01)
    assert isinstance(prior, LocationPrior) and prior.zeroshot.level == "regions"
    lat, lon = np.array([[59.91, 60.39]]), np.array([[10.75, 5.32]])
    groups = neighbour_groups(lat, lon, by="region")[0]
    assert groups[0] != groups[1] and groups[0].startswith("NO/") and groups[1].startswith("NO/")
    p = prior.zeroshot.probs(planted["q"][None])[0]
    labels = prior.zeroshot.labels
    key = np.array([f"{c}/{r}" for c, r in zip(labels.cc, labels.region)])
    by_hand = [p[key == g].sum() for g in groups]
    assert abs(by_hand[0] - by_hand[1]) > 1e-9  # the case distinguishes regions
    np.testing.assert_allclose(prior.probabilities(planted["q"][None], lat, lon)[0], by_hand, rtol=1e-9)
