"""evaluate(): metrics against independent computations, references, leave-one-out, outputs, compare."""

from __future__ import annotations

import json

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


def test_bootstrap_is_seeded():
    v = np.random.default_rng(1).exponential(size=100)
    assert bootstrap_ci(v, 200, seed=3) == bootstrap_ci(v, 200, seed=3)
    assert bootstrap_ci(v, 200, seed=3) != bootstrap_ci(v, 200, seed=4)


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


def test_tune_grid_is_sorted_and_agrees_with_evaluate(stores):
    from geosolver.evaluate import tune

    g, q = stores
    grid = tune(q, g, ks=[5, 10], temperatures=[0.02, 0.1], radii_km=[250, 1000], progress=False)
    assert len(grid) == 2 * 2 * 1 + 2 * 2 * 2  # weighted-mean ignores the radius
    assert list(grid.geoscore) == sorted(grid.geoscore, reverse=True)
    assert grid.loc[grid.strategy == "weighted-mean", "radius_km"].isna().all()
    top = grid.iloc[0]
    assert top.strategy == "densest"
    res = evaluate(q, g, strategies=[top.strategy], ks=[int(top.k)], temperature=top.temperature, radius_km=top.radius_km, bootstrap=10, progress=False)
    assert res["rows"][0]["geoscore"] == pytest.approx(top.geoscore)
