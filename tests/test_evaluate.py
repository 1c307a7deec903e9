"""evaluate(): metrics against independent computations, references, leave-one-out, outputs, compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from haversine import haversine as hv

from geosolver.evaluate import EvaluateError, OUTPUT_FILES, bootstrap_ci, compare_runs, evaluate, score
from geosolver.store import write_store
from test_locate import ENC, clustered_points, geo_signal, planted_world, unit


def test_score_matches_the_haversine_package_on_random_points():
    rng = np.random.default_rng(0)
    tl, tn = rng.uniform(-80, 80, 500), rng.uniform(-180, 180, 500)
    # guesses at spread-out distances: some exact, some near, some far
    pl = np.clip(tl + rng.choice([0, 0.001, 0.1, 1, 10, 60], 500) * rng.normal(size=500), -89, 89)
    pn = (tn + rng.choice([0, 0.001, 0.1, 1, 10, 60], 500) * rng.normal(size=500) + 180) % 360 - 180
    m, km, _ = score(tl, tn, pl, pn, bootstrap=300)
    ref = np.array([hv((a, b), (c, d)) for a, b, c, d in zip(tl, tn, pl, pn)])  # haversine package, R=6371.0088
    np.testing.assert_allclose(km, ref, rtol=2e-5, atol=1e-6)
    gs = 5000 * np.exp(-ref / 1492.7)
    assert m["geoscore"] == pytest.approx(gs.mean(), rel=1e-4)
    assert m["median_km"] == pytest.approx(np.median(ref), rel=1e-4)
    assert m["mean_km"] == pytest.approx(ref.mean(), rel=1e-4)
    for t in (1, 25, 200, 750, 2500):
        far_from_edge = np.abs(ref - t) > 0.01 * t  # avoid the 1e-4 radius difference at the edges
        assert np.mean((km <= t)[far_from_edge]) == pytest.approx(np.mean((ref <= t)[far_from_edge]))
        assert abs(m[f"acc@{t}km"] - np.mean(ref <= t)) <= 0.004
    lo, hi = m["geoscore_ci95"]
    se = gs.std(ddof=1) / np.sqrt(gs.size)  # normal approximation for comparison
    assert lo < gs.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_interval_by_hand():
    """Values (0, 0, 0, 1): a resample's mean is j/4 with j ~ Binomial(4, 1/4), so
    P(mean = 0) = 0.316 and P(mean <= 0.5) = 0.949, P(mean <= 0.75) = 0.996: the 2.5 % and
    97.5 % percentiles are exactly 0 and 0.75. A constant has a zero-width interval."""
    assert bootstrap_ci(np.array([0.0, 0.0, 0.0, 1.0]), 4000, seed=5) == (0.0, 0.75)
    assert bootstrap_ci(np.full(7, 3.5), 50, seed=1) == (3.5, 3.5)
    # 400 fair coin flips: the interval is about mean ± 1.96·0.5/√400 = ± 0.049
    v = np.array([0.0, 1.0] * 200)
    lo, hi = bootstrap_ci(v, 2000, seed=3)
    assert lo == pytest.approx(0.5 - 0.049, abs=0.006) and hi == pytest.approx(0.5 + 0.049, abs=0.006)
    assert bootstrap_ci(v, 2000, seed=4) != (lo, hi)  # the seed picks the resamples


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    ge, gm, qe, qm = planted_world(n_gal=800, n_q=120)
    return write_store(d / "g", ge, gm, ENC), write_store(d / "q", qe, qm, ENC)


def test_evaluate_writes_every_file_and_ranks_strategies(stores, tmp_path):
    g, q = stores
    out = tmp_path / "run"
    res = evaluate(q, g, ks=[1, 5, 10], out=out, bootstrap=100, progress=False)
    for f in OUTPUT_FILES:
        assert (out / f).stat().st_size > 0, f
    combos = [(r["strategy"], r["k"]) for r in res["rows"]]
    assert combos == [("nn", 1), ("weighted-mean", 5), ("weighted-mean", 10), ("densest", 5), ("densest", 10)]
    by = {c: r for c, r in zip(combos, res["rows"])}
    assert res["best"]["strategy"] == "densest" and res["best"]["geoscore"] == max(r["geoscore"] for r in res["rows"])
    assert by[("densest", 10)]["geoscore"] > by[("nn", 1)]["geoscore"] + 1000
    # the oracle bounds nn; the random reference is far below the best model
    assert res["references"]["oracle"]["geoscore"] >= by[("nn", 1)]["geoscore"]
    assert res["references"]["random"]["geoscore"] < res["best"]["geoscore"] / 3

    preds = pd.read_parquet(out / "predictions.parquet")
    need = {"id", "true_lat", "true_lon", "pred_lat", "pred_lon", "km", "geoscore", "country_true", "country_pred", "strategy", "k"}
    assert need <= set(preds.columns) and len(preds) == len(q) * (len(combos) + 2)
    sel = preds[(preds.strategy == "densest") & (preds.k == 10)]
    ref = [hv((a, b), (c, d)) for a, b, c, d in sel[["true_lat", "true_lon", "pred_lat", "pred_lon"]].to_numpy()]
    assert np.mean(5000 * np.exp(-np.array(ref) / 1492.7)) == pytest.approx(by[("densest", 10)]["geoscore"], rel=1e-3)
    # the oracle's guess really is the nearest gallery coordinate (brute force with haversine)
    orc = preds[preds.strategy == "oracle"].iloc[:5]
    for _, row in orc.iterrows():
        d = [hv((row.true_lat, row.true_lon), (a, b)) for a, b in zip(g.metadata.lat, g.metadata.lon)]
        assert row.km == pytest.approx(min(d), rel=1e-3, abs=1e-3)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best"] == json.loads(json.dumps(res["best"]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ks"] == [1, 5, 10] and cfg["temperature"] > 0 and cfg["index"]["kind"] == "flat"
    md = (out / "metrics.md").read_text()
    assert md.count("\n| ") == len(combos) + 2 and "| oracle |" in md and "| random |" in md


def test_leave_one_out_when_gallery_contains_the_queries(tmp_path):
    rng = np.random.default_rng(2)
    lat, lon = clustered_points(300, 15, 1.0, rng)
    emb = unit(geo_signal(lat, lon) + 0.03 * rng.normal(size=(300, 32)))
    store = write_store(tmp_path / "s", emb, pd.DataFrame({"id": [f"x{i}" for i in range(300)], "lat": lat, "lon": lon}), ENC)
    plain = evaluate(store, store, strategies=["nn"], ks=[1], out=tmp_path / "a", bootstrap=10, progress=False)
    assert plain["rows"][0]["geoscore"] == pytest.approx(5000) and plain["references"]["oracle"]["median_km"] == 0
    loo = evaluate(store, store, strategies=["nn", "densest"], ks=[5], exclude_self=True, out=tmp_path / "b", bootstrap=10, plots=False, progress=False)
    preds = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    for strat in ("nn", "oracle", "random"):
        assert (preds[preds.strategy == strat].km > 1e-6).all(), strat  # never its own location
    assert loo["rows"][0]["geoscore"] < 5000 and loo["references"]["oracle"]["geoscore"] >= loo["rows"][0]["geoscore"]


def test_country_column_is_used_when_present(tmp_path):
    g = write_store(tmp_path / "g", unit(geo_signal(np.array([48.85, 52.52]), np.array([2.35, 13.40]))),
                    pd.DataFrame({"id": ["paris", "berlin"], "lat": [48.85, 52.52], "lon": [2.35, 13.40]}), ENC)
    qlat, qlon = np.array([48.86, 52.50, 48.80]), np.array([2.34, 13.41, 2.30])
    meta = pd.DataFrame({"id": ["a", "b", "c"], "lat": qlat, "lon": qlon, "country": pd.array(["fr", None, "XX"], dtype="string")})
    q = write_store(tmp_path / "q", unit(geo_signal(qlat, qlon)), meta, ENC)
    res = evaluate(q, g, strategies=["nn"], ks=[1], out=None, bootstrap=10, progress=False)
    # a: column "fr" → FR ✓; b: missing (<NA>) → reverse geocoded DE ✓; c: column says XX, guess is FR ✗
    assert res["rows"][0]["country_acc"] == pytest.approx(2 / 3)


def test_incompatible_stores_fail_clearly(stores, tmp_path):
    g, q = stores
    other = write_store(tmp_path / "o", np.eye(3, 32, dtype=np.float32), pd.DataFrame({"id": list("abc"), "lat": [0.0] * 3, "lon": [0.0] * 3}), {"name": "other", "dim": 32})
    with pytest.raises(EvaluateError, match="different encoders.*'other' vs 'synthetic'"):
        evaluate(other, g, progress=False)
    small = write_store(tmp_path / "d", np.eye(3, 16, dtype=np.float32), pd.DataFrame({"id": list("abc"), "lat": [0.0] * 3, "lon": [0.0] * 3}), {"name": "synthetic", "dim": 16})
    with pytest.raises(EvaluateError, match="dim"):
        evaluate(small, g, progress=False)
    with pytest.raises(EvaluateError, match="unknown strategy"):
        evaluate(q, g, strategies=["mode"], progress=False)


def test_compare_and_cli(stores, tmp_path, capsys):
    from geosolver.cli import main

    g, q = stores
    a, b = tmp_path / "run_t002", tmp_path / "run_t1"
    assert main(["evaluate", "--queries", str(q.path), "--gallery", str(g.path), "--k", "5,10", "--out", str(a), "--bootstrap", "50", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "| densest | 10 |" in printed and "| oracle |" in printed
    evaluate(q, g, strategies=["weighted-mean"], ks=[10], temperature=1.0, out=b, bootstrap=50, plots=False, progress=False)
    rows, md = compare_runs([a, b])
    assert [(r["run"], r["strategy"]) for r in rows] == [("run_t002", "densest"), ("run_t002", "oracle"), ("run_t1", "weighted-mean"), ("run_t1", "oracle")]
    assert "| run_t002 |" in md and "| run_t1 |" in md
    rows_all, _ = compare_runs([a, b], all_rows=True, references=False)
    assert len(rows_all) == 5 + 1
    outf = tmp_path / "cmp.md"
    assert main(["compare", str(a), str(b), "--out", str(outf)]) == 0
    assert outf.read_text().strip() == capsys.readouterr().out.strip() == md
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def _three_point_stores(d):
    """One query at (0, 0); gallery A (1, 0) and B (-1, 0) with similarity 0.5, C (0, 90) with
    similarity 0.75 (every value exact in float16)."""
    q = np.zeros((1, 32))
    q[0, 0] = 1.0
    ab = np.zeros(32)
    ab[:4] = 0.5
    c = np.zeros(32)
    c[:5] = [0.75, 0.5, 0.25, 0.25, 0.25]
    gal = pd.DataFrame({"id": ["A", "B", "C"], "lat": [1.0, -1.0, 0.0], "lon": [0.0, 0.0, 90.0]})
    return (write_store(d / "g3", np.array([ab, ab, c]), gal, ENC),
            write_store(d / "q3", q, pd.DataFrame({"id": ["q"], "lat": [0.0], "lon": [0.0]}), ENC))


def test_tune_and_evaluate_against_hand_computed_geoscores(tmp_path):
    """Softmax weights ∝ e^(sim/T): C : A = e^(0.25/T). densest with radius 250 km (|AB| = 222 km)
    picks {A, B} when 2·e^(0.5/T) > e^(0.75/T), i.e. T > 0.25/ln 2 = 0.36: at T = 0.5 the guess
    is their mean (0, 0), Geoscore 5000; at T = 0.1, or with radius 100 km, it is C, 90° away.
    weighted-mean answers the equator at lon atan2(e^(0.25/T), 2·cos 1°)."""
    from geosolver.evaluate import tune

    g, q = _three_point_stores(tmp_path)
    km_deg = 6371.0 * math.pi / 180  # one degree on the equator

    def gs(deg):
        return 5000 * math.exp(-deg * km_deg / 1492.7)

    def wm(t):
        return math.degrees(math.atan2(math.exp(0.25 / t), 2 * math.cos(math.radians(1.0))))

    want = {("densest", 0.5, 250.0): gs(0), ("densest", 0.5, 100.0): gs(90), ("densest", 0.1, 250.0): gs(90),
            ("densest", 0.1, 100.0): gs(90), ("weighted-mean", 0.5, None): gs(wm(0.5)), ("weighted-mean", 0.1, None): gs(wm(0.1))}
    assert gs(90) == pytest.approx(6.128, abs=0.001) and wm(0.1) == pytest.approx(80.7, abs=0.1)  # the hand numbers
    grid = tune(q, g, ks=[3], temperatures=[0.1, 0.5], radii_km=[100, 250], progress=False)
    got = {(r.strategy, r.temperature, None if r.radius_km != r.radius_km else r.radius_km): r.geoscore for r in grid.itertuples()}
    assert got.keys() == want.keys()
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-4, abs=1e-3), key
    assert list(grid.geoscore) == sorted(grid.geoscore, reverse=True)
    assert (grid.iloc[0].strategy, grid.iloc[0].temperature, grid.iloc[0].radius_km) == ("densest", 0.5, 250.0)
    from geosolver.evaluate import EvaluateWarning

    with pytest.warns(EvaluateWarning, match="perfect score"):  # 5000 is said aloud, even when it is honest
        res = evaluate(q, g, strategies=["densest", "weighted-mean"], ks=[3], temperature=[0.1, 0.5], radius_km=[100, 250],
                       bootstrap=10, progress=False)
    rows = {(r["strategy"], r["temperature"], r["radius_km"]): r for r in res["rows"]}
    assert rows.keys() == want.keys()  # an unused setting is None
    for key, v in want.items():
        assert rows[key]["geoscore"] == pytest.approx(v, rel=1e-4, abs=1e-3), key
    assert res["best"]["geoscore"] == pytest.approx(5000.0) and rows[("densest", 0.5, 250.0)]["is_best"]


# ----------------------------------------------------------------------------------------------
# queries inside the gallery: never a silent perfect score; leave-one-out through the CLI
# ----------------------------------------------------------------------------------------------
ONE_DEG_KM = 6371.0 * np.pi / 180  # one degree of latitude on the 6371 km sphere
LOO_GEOSCORE = 5000 * np.exp(-ONE_DEG_KM / 1492.7)  # every leave-one-out guess is 1° of latitude off


def _pairs_store(path, ids=None, members="ab"):
    """10 pairs of near-identical photos 1° of latitude apart; pairs are orthogonal to each other.

    Leave-one-out, each photo's nearest neighbour is its partner, exactly ``ONE_DEG_KM`` away."""
    emb, lat, lon, names = [], [], [], []
    for j in range(10):
        for m in members:
            v = np.zeros(32)
            v[j] = 1.0
            v[10 + j] = 0.0 if m == "a" else 0.3  # cos(a, b) = 0.958, far from float16 ties
            emb.append(v)
            lat.append(-60.0 + 12 * j + (1.0 if m == "b" else 0.0))
            lon.append(-170.0 + 35 * j)
            names.append(f"p{j}{m}")
    meta = pd.DataFrame({"id": ids if ids is not None else names, "lat": lat, "lon": lon})
    return write_store(path, unit(np.array(emb)), meta, ENC)


def _cli_eval(store_q, store_g, out, *extra):
    from geosolver.cli import main

    argv = ["evaluate", "--queries", str(store_q), "--gallery", str(store_g), "--strategy", "nn", "--k", "1",
            "--out", str(out), "--bootstrap", "10", "--no-plots", *extra]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_cli_same_store_is_leave_one_out_by_default_and_says_so(tmp_path, capsys):
    s = _pairs_store(tmp_path / "s")
    res = _cli_eval(s.path, s.path, tmp_path / "auto")
    io = capsys.readouterr()
    assert res["rows"][0]["geoscore"] == pytest.approx(LOO_GEOSCORE, rel=1e-4)
    assert res["rows"][0]["median_km"] == pytest.approx(ONE_DEG_KM, rel=1e-4)
    assert res["references"]["oracle"]["median_km"] == pytest.approx(ONE_DEG_KM, rel=1e-4)
    assert res["self_overlap"]["queries_in_gallery"] == 20 and res["config"]["exclude_self"] is True
    assert "leave-one-out" in io.err and "--no-exclude-self" in io.err
    assert "leave-one-out" in (tmp_path / "auto" / "metrics.md").read_text()


def test_cli_no_exclude_self_warns_loudly_and_records_it(tmp_path, capsys):
    s = _pairs_store(tmp_path / "s")
    res = _cli_eval(s.path, s.path, tmp_path / "plain", "--no-exclude-self")
    err = capsys.readouterr().err
    assert res["rows"][0]["geoscore"] == pytest.approx(5000)  # the old behaviour, on request
    assert "WARNING" in err and "20 of 20 queries" in err and "--exclude-self" in err
    assert res["self_overlap"]["queries_in_gallery"] == 20 and res["config"]["exclude_self"] is False
    assert any("20 of 20 queries" in w for w in res["warnings"])
    assert "20 of 20 queries" in (tmp_path / "plain" / "metrics.md").read_text()


def test_cli_exclude_self_changes_the_result_when_queries_are_a_subset_of_the_gallery(tmp_path, capsys):
    g = _pairs_store(tmp_path / "g")
    q = _pairs_store(tmp_path / "q", members="a")  # another store: the 10 "a" photos, also in the gallery
    plain = _cli_eval(q.path, g.path, tmp_path / "plain")
    err = capsys.readouterr().err
    assert plain["rows"][0]["geoscore"] == pytest.approx(5000)  # not the same store: no automatic leave-one-out…
    assert "10 of 10 queries" in err and "--exclude-self" in err  # …but never silently
    assert plain["self_overlap"]["queries_in_gallery"] == 10
    loo = _cli_eval(q.path, g.path, tmp_path / "loo", "--exclude-self")
    assert loo["rows"][0]["geoscore"] == pytest.approx(LOO_GEOSCORE, rel=1e-4)
    assert loo["config"]["exclude_self"] is True
    preds = pd.read_parquet(tmp_path / "loo" / "predictions.parquet")
    np.testing.assert_allclose(preds[preds.strategy == "nn"].km, ONE_DEG_KM, rtol=1e-4)


def test_a_perfect_score_without_shared_ids_is_not_silent(tmp_path, capsys):
    g = _pairs_store(tmp_path / "g")
    q = _pairs_store(tmp_path / "q", ids=[f"copy{i}" for i in range(20)])  # the same photos under other ids
    res = _cli_eval(q.path, g.path, tmp_path / "r")
    err = capsys.readouterr().err
    assert res["rows"][0]["geoscore"] == pytest.approx(5000)
    assert res["self_overlap"]["queries_in_gallery"] == 0
    assert "WARNING" in err and "perfect" in err


def test_api_records_overlap_without_changing_its_default(tmp_path):
    s = _pairs_store(tmp_path / "s")
    from geosolver.evaluate import EvaluateWarning

    with pytest.warns(EvaluateWarning, match="20 of 20 queries"):
        res = evaluate(s, s, strategies=["nn"], ks=[1], bootstrap=10, progress=False)
    assert res["rows"][0]["geoscore"] == pytest.approx(5000)
    assert res["self_overlap"]["queries_in_gallery"] == 20 and res["warnings"]
    auto = evaluate(s, s, strategies=["nn"], ks=[1], exclude_self="auto", bootstrap=10, progress=False)
    assert auto["rows"][0]["geoscore"] == pytest.approx(LOO_GEOSCORE, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# references in every table: random and oracle, without a meaningless k
# ----------------------------------------------------------------------------------------------
def _fake_run(d, enc, n_gal, best_gs, random_gs, oracle_gs):
    def row(strategy, k, gs):
        return {"strategy": strategy, "k": k, "n": 10, "geoscore": gs, "geoscore_ci95": [gs - 10, gs + 10], "median_km": 12.5,
                "mean_km": 20.0, "acc@1km": 0.1, "acc@25km": 0.2, "acc@200km": 0.3, "acc@750km": 0.4, "acc@2500km": 0.5, "country_acc": 0.6}

    best = row("densest", 10, best_gs)
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({
        "rows": [best], "best": best, "references": {"random": row("random", 0, random_gs), "oracle": row("oracle", 0, oracle_gs)},
        "config": {"encoder": {"name": enc}, "n_gallery": n_gal},
    }))
    return d


def test_compare_shows_random_and_oracle_references_without_k(tmp_path, capsys):
    from geosolver.cli import main

    a = _fake_run(tmp_path / "ra", "enc-a", 50, 3000.0, 1111.0, 4444.0)
    b = _fake_run(tmp_path / "rb", "enc-b", 70, 2500.0, 1222.0, 4333.0)
    assert main(["compare", str(a), str(b)]) == 0
    md = capsys.readouterr().out
    assert "| ra | enc-a | 50 | random | – | 1111 | [1101, 1121] |" in md
    assert "| ra | enc-a | 50 | oracle | – | 4444 |" in md
    assert "| rb | enc-b | 70 | random | – | 1222 |" in md
    assert "| rb | enc-b | 70 | densest | 10 | 2500 |" in md
    assert "| 0 |" not in md


def test_metrics_table_shows_references_without_k(stores, tmp_path):
    g, q = stores
    evaluate(q, g, strategies=["nn"], ks=[1], out=tmp_path / "r", bootstrap=10, plots=False, progress=False)
    md = (tmp_path / "r" / "metrics.md").read_text()
    assert "| random | – |" in md and "| oracle | – |" in md and "| 0 |" not in md


# ----------------------------------------------------------------------------------------------
# sweeping temperature and radius through `geosolver evaluate`
# ----------------------------------------------------------------------------------------------
def test_cli_sweeps_temperature_and_radius(tmp_path, capsys):
    from geosolver.cli import main
    from geosolver.locate import aggregate

    rng = np.random.default_rng(5)
    glat, glon = clustered_points(400, 20, 2.0, rng)
    qlat, qlon = clustered_points(50, 20, 2.0, np.random.default_rng(5))
    gemb = unit(geo_signal(glat, glon) + 0.3 * rng.normal(size=(400, 32)))
    qemb = unit(geo_signal(qlat, qlon) + 0.3 * rng.normal(size=(50, 32)))
    g = write_store(tmp_path / "g", gemb, pd.DataFrame({"id": [f"g{i}" for i in range(400)], "lat": glat, "lon": glon}), ENC)
    q = write_store(tmp_path / "q", qemb, pd.DataFrame({"id": [f"q{i}" for i in range(50)], "lat": qlat, "lon": qlon}), ENC)
    out = tmp_path / "sweep"
    assert main(["evaluate", "--queries", str(q.path), "--gallery", str(g.path), "--strategy", "weighted-mean,densest", "--k", "8",
                 "--temperature", "0.02,0.1", "--radius-km", "250,1000", "--out", str(out), "--bootstrap", "10", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())

    # independent reference: brute-force top-8 by cosine on the stored (float16) embeddings, the haversine package
    ge, qe = g.embeddings(), q.embeddings()
    sims = qe @ ge.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :8]
    s8 = np.take_along_axis(sims, top, 1)
    want = {}
    for strategy, t, r in [("weighted-mean", 0.02, None), ("weighted-mean", 0.1, None), ("densest", 0.02, 250.0),
                           ("densest", 0.02, 1000.0), ("densest", 0.1, 250.0), ("densest", 0.1, 1000.0)]:
        plat, plon, _ = aggregate(s8, glat[top], glon[top], strategy, t, r or 500.0)
        km = np.array([hv((a, b), (c, d)) for a, b, c, d in zip(qlat, qlon, plat, plon)])
        want[(strategy, t, r)] = np.mean(5000 * np.exp(-km / 1492.7))
    got = {(r["strategy"], r["temperature"], r["radius_km"]): r["geoscore"] for r in res["rows"]}
    assert set(got) == set(want) and all(r["k"] == 8 for r in res["rows"])
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-3), key
    best_key = max(want, key=want.get)
    marked = [r for r in res["rows"] if r.get("is_best")]
    assert len(marked) == 1 and (marked[0]["strategy"], marked[0]["temperature"], marked[0]["radius_km"]) == best_key
    assert (res["best"]["strategy"], res["best"]["temperature"], res["best"]["radius_km"]) == best_key
    assert res["config"]["temperature"] == [0.02, 0.1] and res["config"]["radius_km"] == [250.0, 1000.0]
    md = (out / "metrics.md").read_text()
    assert md.count("\n| ") == 6 + 2 and md.count("best") >= 2 and "temperature" in md and "radius_km" in md
    assert "| densest | 8 | 0.1 | 1000 |" in md and "| weighted-mean | 8 | 0.02 | – |" in md
    assert printed.strip().startswith(md.split("\n")[0])
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == 50 * (6 + 2)


@pytest.mark.parametrize("opt,value", [("--temperature", "0.02,nan"), ("--temperature", "0.1,-1"), ("--radius-km", "100,inf"),
                                       ("--radius-km", "0,100"), ("--temperature", ","), ("--radius-km", "abc")])
def test_cli_refuses_bad_sweep_values_in_one_line(opt, value, tmp_path, capsys, monkeypatch):
    from geosolver.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--queries", "q", "--gallery", "g", "--out", "o", opt, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and f"argument {opt}" in errors[0] and "Traceback" not in err
    assert not list(tmp_path.iterdir())
