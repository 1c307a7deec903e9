"""Tests of geosolver.analysis on generated embeddings with a known relation to location."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geosolver.analysis import (
    AnalysisError,
    MonotoneCurve,
    align_stores,
    all_pairs_stats,
    analyze_stores,
    count_rises,
    diagnostics,
    fit_monotone_curve,
    sampled_pairs_stats,
)
from geosolver.analysis import pairs as pairs_mod
from geosolver.analysis.pairs import FINE_SIM_BINS, arc_km, random_pairs, spearman_pairs
from geosolver.analysis.synthetic import geo_embeddings
from geosolver.geo import EARTH_RADIUS_KM, haversine, latlon_to_xyz, random_points_on_sphere
from geosolver.store import l2_normalize, write_store


def clustered_points(n_clusters: int, per: int, seed: int, spread_deg: float = 0.15):
    """Points in tight clusters (many pairs < 25 km) spread over the globe (many > 5000 km)."""
    rng = np.random.default_rng(seed)
    clat, clon = random_points_on_sphere(n_clusters, rng)
    clat = np.clip(clat, -80, 80)
    lat = np.repeat(clat, per) + rng.normal(0, spread_deg, n_clusters * per)
    lon = (np.repeat(clon, per) + rng.normal(0, spread_deg, n_clusters * per) + 180) % 360 - 180
    return lat, lon


def brute(emb, lat, lon):
    """Similarity and distance (geo.haversine, float64) of every pair i < j from the full matrices."""
    s = emb @ emb.T
    d = haversine(lat[:, None], lon[:, None], lat[None], lon[None])
    iu = np.triu_indices(len(lat), k=1)
    return s[iu].astype(np.float64), d[iu]


def test_block_distances_agree_with_geo_haversine():
    lat, lon = random_points_on_sphere(400, 1)
    lat[1], lon[1] = lat[0] + 1e-4, lon[0]  # ~11 m apart
    lat[3], lon[3] = -lat[2], (lon[2] + 180 + 0.01) % 360 - 180  # almost antipodal
    xyz = latlon_to_xyz(lat, lon)
    d = arc_km(xyz @ xyz.T)
    ref = haversine(lat[:, None], lon[:, None], lat[None], lon[None])
    assert d.dtype == np.float32
    assert np.abs(d - ref)[ref < 100].max() < 1e-3  # < 1 m at short range
    assert np.abs(d - ref).max() < 3.0
    assert d[0, 1] == pytest.approx(ref[0, 1], rel=1e-3)


# -- correlation: signal vs no signal --------------------------------------------------------
def test_spearman_strongly_negative_with_location_signal_and_zero_without():
    lat, lon = random_points_on_sphere(500, 3)
    geo = geo_embeddings(lat, lon, 64, signal=1.5, rng=1)
    null = geo_embeddings(lat, lon, 64, signal=0.0, rng=2)
    i, j = np.triu_indices(500, k=1)
    rho_geo, rho_null = spearman_pairs([geo, null], lat, lon, i, j)
    assert rho_geo < -0.4
    assert abs(rho_null) < 0.05
    st_geo, st_null = all_pairs_stats([geo, null], lat, lon, block=128, progress=False)
    assert st_geo.pearson() < -0.4
    assert abs(st_null.pearson()) < 0.05


# -- blocked statistics == brute force --------------------------------------------------------
def test_blocked_statistics_equal_brute_force():
    lat, lon = clustered_points(40, 8, seed=5)  # 320 images, 51 040 pairs
    emb = geo_embeddings(lat, lon, 32, signal=1.0, rng=0)
    (st,) = all_pairs_stats([emb], lat, lon, block=50, progress=False)
    s, d = brute(emb, lat, lon)
    n = len(lat)
    assert st.n_pairs == n * (n - 1) // 2 == s.size

    # per display bin count / mean / std (a pair within 3 m of a bin edge may fall either side:
    # the pass computes distances in float32, the reference in float64)
    disp = np.digitize(d, st.dist_edges) - 1
    b = st.binned()
    near_edge = np.abs(d[:, None] - st.dist_edges[None]).min(axis=1) < 3e-3
    assert near_edge.sum() < 5
    for k in np.unique(disp[~near_edge]):
        sel = disp == k
        if near_edge[sel].any() or near_edge[disp == k + 1].any() or near_edge[disp == k - 1].any():
            continue
        assert b["count"][k] == sel.sum()
        assert b["mean"][k] == pytest.approx(s[sel].mean(), abs=1e-6)
        assert b["std"][k] == pytest.approx(s[sel].std(), abs=1e-5)
        assert b["mean_km"][k] == pytest.approx(d[sel].mean(), rel=1e-6)
    assert b["count"].sum() == s.size

    # 2-D histogram: exact, except pairs within float32 rounding of a similarity-bin edge
    h2, _, _ = np.histogram2d(d, s, bins=[st.dist_edges, st.sim_edges])
    on_edge = np.count_nonzero(np.abs(s[:, None] - st.sim_edges[None]).min(axis=1) < 1e-6) + near_edge.sum()
    assert np.abs(st.hist2d - h2).sum() <= 2 * on_edge

    # Pearson, mean, MSE from a curve, MSE from a constant
    assert st.pearson() == pytest.approx(np.corrcoef(s, d)[0, 1], abs=1e-6)
    assert st.mean_sim() == pytest.approx(s.mean(), abs=1e-7)
    assert st.uniformity() == pytest.approx(np.log(np.mean(np.exp(-2 * (2 - 2 * s)))), abs=1e-6)
    assert st.uniformity() == pytest.approx(diagnostics(emb)["uniformity"], abs=1e-6)
    curve = fit_monotone_curve(st.bin_centers_km, b["mean"], b["count"])
    assert st.mse(curve) == pytest.approx(np.mean((s - curve(d)) ** 2), rel=1e-5)
    assert st.mse(lambda km: np.full_like(km, 0.3)) == pytest.approx(np.mean((s - 0.3) ** 2), rel=1e-6)

    # false friends: 95th percentile of near pairs, share of far pairs above it
    ff = st.false_friends()
    near, far = s[d < 25], s[d > 5000]
    assert ff["n_near_pairs"] == near.size > 100 and ff["n_far_pairs"] == far.size > 1000
    thr = np.quantile(near, 0.95)
    w = 2.0 / FINE_SIM_BINS
    assert abs(ff["near_p95_sim"] - thr) <= 2 * w
    assert np.count_nonzero(far > thr + 2 * w) <= ff["n_false_friends"] <= np.count_nonzero(far > thr - 2 * w)


def test_sampled_pairs_give_the_same_statistics_as_all_pairs():
    lat, lon = random_points_on_sphere(120, 9)
    emb = geo_embeddings(lat, lon, 16, rng=4)
    (full,) = all_pairs_stats([emb], lat, lon, block=17, progress=False)
    i, j = np.triu_indices(120, k=1)
    perm = np.random.default_rng(0).permutation(i.size)
    (samp,) = sampled_pairs_stats([emb], lat, lon, j[perm], i[perm], block=999, progress=False)  # swapped order, other blocks
    np.testing.assert_array_equal(full.n, samp.n)
    np.testing.assert_array_equal(full.hist2d, samp.hist2d)
    np.testing.assert_allclose(full.s, samp.s, rtol=1e-5, atol=1e-6)
    assert samp.pearson() == pytest.approx(full.pearson(), abs=1e-4)  # 64- vs 32-bit coordinates


# -- ideal curve -------------------------------------------------------------------------------
def test_isotonic_curve_is_non_increasing_and_beats_every_constant():
    lat, lon = random_points_on_sphere(400, 11)
    emb = geo_embeddings(lat, lon, 32, signal=1.0, rng=3)
    (st,) = all_pairs_stats([emb], lat, lon, progress=False)
    b = st.binned()
    curve = fit_monotone_curve(st.bin_centers_km, b["mean"], b["count"])
    assert curve.is_non_increasing
    assert np.all(np.diff(curve(np.linspace(0, 20015, 2000))) <= 1e-12)
    s, d = brute(emb, lat, lon)
    mse = np.mean((s - curve(d)) ** 2)
    for c in [s.mean(), np.median(s), 0.0, s.mean() + 0.01, s.mean() - 0.01]:
        assert mse <= np.mean((s - c) ** 2)
    assert mse < 0.9 * s.var()  # and the signal is really explained


def test_monotone_curve_interpolates_and_round_trips_json():
    c = MonotoneCurve(np.array([10.0, 100.0, 1000.0]), np.array([0.9, 0.5, 0.1]))
    assert c(10.0) == pytest.approx(0.9)
    assert c(55.0) == pytest.approx(0.7)  # halfway between the first two knots
    assert c(0.0) == pytest.approx(0.9) and c(20000.0) == pytest.approx(0.1)  # clamped
    c2 = MonotoneCurve.from_json(c.to_json())
    np.testing.assert_array_equal(c2.knots_km, c.knots_km)
    np.testing.assert_array_equal(c2.values, c.values)
    assert MonotoneCurve.from_json(json.loads(c.to_json()))(550.0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        MonotoneCurve(np.array([1.0, 1.0]), np.array([0.0, 0.0]))


def test_violation_count_zero_for_monotone_construction_positive_for_rising_curve():
    lat, lon = random_points_on_sphere(400, 21)
    xyz = latlon_to_xyz(lat, lon).astype(np.float32)  # cosine = cos(d / R): strictly decreasing in d
    outer = l2_normalize(np.einsum("ni,nj->nij", xyz, xyz).reshape(len(xyz), 9))  # cosine = cos²(d / R): high at 0 and antipode
    mono, rising = all_pairs_stats([xyz, outer], lat, lon, progress=False)
    bm, br = mono.binned(), rising.binned()
    assert count_rises(bm["mean"], bm["std"], bm["count"]) == {"rises": 0, "violations": 0}
    r = count_rises(br["mean"], br["std"], br["count"])
    assert r["violations"] > 20  # every bin beyond ~10 000 km rises
    curve = fit_monotone_curve(rising.bin_centers_km, br["mean"], br["count"])
    assert curve.is_non_increasing
    assert rising.mse(curve) > rising.mse_binned_mean() + 1e-3  # a monotone curve cannot follow the rise


# -- collapse diagnostics ------------------------------------------------------------------------
def test_collapsed_set_has_tiny_effective_rank_and_high_mean_cosine():
    rng = np.random.default_rng(0)
    v = rng.normal(size=64)
    x = v + 1e-3 * rng.normal(size=(600, 64))
    dg = diagnostics(x)
    assert dg["effective_rank"] < 2
    assert dg["mean_cosine"] > 0.99
    assert dg["mean_norm"] > 0.99
    assert dg["uniformity"] > -0.01  # all pairs at distance ≈ 0


def test_isotropic_gaussian_has_full_rank_and_zero_mean_cosine():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 64))
    dg = diagnostics(x)
    assert dg["effective_rank"] > 0.9 * 64
    assert dg["effective_rank_centered"] > 0.9 * 64
    assert abs(dg["mean_cosine"]) < 0.005
    assert dg["mean_norm"] < 0.05
    assert dg["pc1_variance_share"] < 0.05
    # cos ~ N(0, 1/64)  =>  log E exp(-2(2 - 2 cos)) = -4 + log E exp(4 cos) ≈ -4 + 16 / (2 * 64)
    assert dg["uniformity"] == pytest.approx(-4 + 16 / 128, abs=0.03)


def test_diagnostics_equal_full_matrix_definitions():
    rng = np.random.default_rng(2)
    x = l2_normalize(rng.normal(size=(300, 24)) + 0.7 * rng.normal(size=24))
    dg = diagnostics(x, block=64)
    x64 = x.astype(np.float64)
    g = x64 @ x64.T
    iu = np.triu_indices(300, k=1)
    assert dg["mean_cosine"] == pytest.approx(g[iu].mean(), abs=1e-7)  # float32 input
    sv = np.linalg.svd(x64, compute_uv=False)
    p = sv / sv.sum()
    assert dg["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    svc = np.linalg.svd(x64 - x64.mean(0), compute_uv=False)
    var = svc**2
    assert dg["pc1_variance_share"] == pytest.approx(var[0] / var.sum(), rel=1e-6)
    assert dg["pc10_variance_share"] == pytest.approx(var[:10].sum() / var.sum(), rel=1e-6)
    sq = ((x64[:, None] - x64[None]) ** 2).sum(-1)[iu]
    assert dg["uniformity"] == pytest.approx(np.log(np.mean(np.exp(-2 * sq))), abs=1e-5)
    assert dg["mean_norm"] == pytest.approx(np.linalg.norm(x64.mean(0)), rel=1e-6)


# -- stores, report, CLI ---------------------------------------------------------------------------
def _store(path, emb, lat, lon, ids, name):
    meta = pd.DataFrame({"id": ids, "lat": lat, "lon": lon})
    return write_store(path, emb, meta, {"name": name, "dim": emb.shape[1]})


@pytest.fixture()
def two_stores(tmp_path):
    lat, lon = clustered_points(30, 10, seed=7)
    ids = [f"img{k:04d}" for k in range(len(lat))]
    a = _store(tmp_path / "a", geo_embeddings(lat, lon, 32, signal=1.5, rng=0), lat, lon, ids, "geo-enc")
    b = _store(tmp_path / "b", geo_embeddings(lat, lon, 48, signal=0.0, rng=1), lat, lon, ids, "null-enc")
    return a, b


def test_report_files_exist_and_stats_json_equals_api(two_stores, tmp_path):
    a, b = two_stores
    out = tmp_path / "report"
    res = analyze_stores([a.path, b.path], out, sample=200, seed=3, progress=False)
    for f in ["report.html", "report.md", "stats.json", "config.json", "sim_vs_distance.png", "curves.png", "sim_hist.png"]:
        assert (out / f).stat().st_size > 0, f
    assert json.loads((out / "stats.json").read_text()) == res
    assert res["n_images"] == 200 and res["n_pairs"] == 200 * 199 // 2
    geo, null = res["encoders"]["geo-enc"], res["encoders"]["null-enc"]
    assert geo["spearman"] < -0.3 and abs(null["spearman"]) < 0.05
    assert geo["false_friend_share"] < null["false_friend_share"]
    assert geo["r2_isotonic"] > 0.2 > null["r2_isotonic"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sample"] == 200 and cfg["seed"] == 3 and cfg["names"] == ["geo-enc", "null-enc"]
    curve = MonotoneCurve.from_json((out / f"curve_{geo['slug']}.json").read_text())
    np.testing.assert_allclose(curve.values, geo["curve"]["sim"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "src=\"sim_" not in html  # self-contained
    assert "geo-enc" in html and "Spearman" in html
    md = (out / "report.md").read_text()
    assert "![" in md and "| metric | geo-enc | null-enc |" in md
    for png in ["sim_vs_distance.png", "curves.png", "sim_hist.png"]:
        with Image.open(out / png) as im:
            assert im.size[0] > 500
    # same seed -> same sample -> same numbers
    res2 = analyze_stores([a.path, b.path], tmp_path / "again", sample=200, seed=3, progress=False, report=False)
    assert res2["encoders"]["geo-enc"]["pearson"] == res["encoders"]["geo-enc"]["pearson"]


def test_random_pairs_mode(two_stores, tmp_path):
    a, _ = two_stores
    res = analyze_stores([a.path], tmp_path / "o", sample=100, pairs=20_000, progress=False, report=False)
    e = res["encoders"]["geo-enc"]
    assert res["mode"] == "random_pairs" and res["n_pairs"] == e["n_pairs"] == 20_000
    assert e["spearman"] < -0.3 and e["diagnostics"]["n"] == 100
    assert "exact" in res["spearman_method"]


def test_stores_with_partially_overlapping_ids_are_aligned_by_id(tmp_path):
    lat, lon = random_points_on_sphere(300, 8)
    emb = geo_embeddings(lat, lon, 16, rng=5)
    ids = np.array([f"p{k}" for k in range(300)])
    a = _store(tmp_path / "a", emb[:200], lat[:200], lon[:200], ids[:200], "enc")
    order = np.random.default_rng(0).permutation(np.arange(120, 300))  # overlap: ids 120..199, shuffled
    b = _store(tmp_path / "b", emb[order], lat[order], lon[order], ids[order], "enc")
    rows, shared, la, lo = align_stores([a, b])
    assert sorted(shared) == sorted(ids[120:200])
    assert list(a.metadata["id"].iloc[rows[0]]) == list(b.metadata["id"].iloc[rows[1]]) == list(shared)
    res = analyze_stores([a.path, b.path], tmp_path / "o", sample=1000, names=["A", "B"], progress=False, report=False)
    assert res["n_shared_images"] == res["n_images"] == 80
    ea, eb = res["encoders"]["A"], res["encoders"]["B"]  # same vectors per id -> identical statistics
    assert ea["pearson"] == pytest.approx(eb["pearson"], abs=1e-9)
    assert ea["binned"]["count"] == eb["binned"]["count"]
    # mismatched coordinates for a shared id are an error naming the id
    lat_bad = lat.copy()
    lat_bad[150] += 5.0
    c = _store(tmp_path / "c", emb[120:300], lat_bad[120:300], lon[120:300], ids[120:300], "enc")
    with pytest.raises(AnalysisError, match="p150"):
        align_stores([a, c])
    d = _store(tmp_path / "d", emb[250:], lat[250:], lon[250:], ids[250:], "enc")
    with pytest.raises(AnalysisError, match="share 0"):
        analyze_stores([a.path, d.path], tmp_path / "o2", progress=False)


def test_cli_analyze(two_stores, tmp_path, capsys):
    from geosolver.cli import main

    a, b = two_stores
    out = tmp_path / "cli"
    rc = main(["analyze", str(a.path), str(b.path), "--out", str(out), "--sample", "80", "--names", "street,openai", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "street" in printed and "openai" in printed and "Spearman" in printed
    assert set(json.loads((out / "stats.json").read_text())["encoders"]) == {"street", "openai"}
    rc = main(["analyze", str(a.path), "--out", str(out), "--names", "x,y"])
    assert rc == 2
    assert "2 name(s) for 1 store(s)" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope"), "--out", str(out)]) == 2



def test_out_that_is_a_file_is_one_clear_error_and_config_has_the_run_fields(two_stores, tmp_path, capsys):
    from geosolver.cli import main

    a, _ = two_stores
    f = tmp_path / "a-file"
    f.write_text("")
    assert main(["analyze", str(a.path), "--out", str(f), "--sample", "20"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    analyze_stores([a.path], tmp_path / "ok", sample=20, progress=False, report=False)
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert cfg["command"] == "analyze" and cfg["sample"] == 20 and {"geosolver_version", "argv", "created"} <= set(cfg)

def test_spearman_on_a_random_subsample_when_pairs_are_too_many(two_stores, tmp_path):
    a, _ = two_stores
    kw = dict(sample=300, progress=False, report=False)
    exact = analyze_stores([a.path], tmp_path / "e", **kw)
    sub = analyze_stores([a.path], tmp_path / "s", spearman_exact_max_pairs=10_000, spearman_subsample=20_000, **kw)
    assert "exact" in exact["spearman_method"] and "20,000 uniformly random pairs" in sub["spearman_method"]
    rho_e, rho_s = exact["encoders"]["geo-enc"]["spearman"], sub["encoders"]["geo-enc"]["spearman"]
    assert rho_s != rho_e and abs(rho_s - rho_e) < 0.03  # sampling error ≈ 1/sqrt(20 000)


def test_spearman_of_a_hand_ranked_case(tmp_path):
    # four photos on the equator at lon 0, 10, 30, 70: pair distances 10, 30, 70, 20, 60, 40 degrees (no ties)
    lon = np.array([0.0, 10.0, 30.0, 70.0])
    lat = np.zeros(4)

    def on_circle(deg):
        a = np.radians(deg)
        return np.stack([np.cos(a), np.sin(a), np.zeros(4), np.zeros(4)], 1).astype(np.float32)

    meta = pd.DataFrame({"id": ["a", "b", "c", "d"], "lat": lat, "lon": lon})
    # A: similarity = cos(lon difference): falls with every distance, rho = -1
    write_store(tmp_path / "A", on_circle(lon), meta, {"name": "A", "dim": 4})
    # B: angles 0, 70, 10, 30. Distance ranks of pairs (01, 12, 02, 23, 13, 03) = 1..6; their similarity
    # ranks (angle gaps 70, 60, 10, 20, 40, 30) = 1, 2, 6, 5, 3, 4; sum of squared rank differences
    # 0 + 0 + 9 + 1 + 4 + 4 = 18, so rho = 1 - 6*18 / (6*(36-1)) = 17/35
    write_store(tmp_path / "B", on_circle(np.array([0.0, 70.0, 10.0, 30.0])), meta, {"name": "B", "dim": 4})
    res = analyze_stores([tmp_path / "A", tmp_path / "B"], tmp_path / "o", sample=4, block=3, progress=False, report=False)
    assert res["spearman_method"].startswith("exact over all 6 pairs")
    assert res["encoders"]["A"]["spearman"] == pytest.approx(-1.0, abs=1e-12)
    assert res["encoders"]["B"]["spearman"] == pytest.approx(17 / 35, abs=1e-12)


def test_kept_pair_similarities_are_read_from_the_blocks_exactly():
    rng = np.random.default_rng(4)
    lat, lon = random_points_on_sphere(50, 4)
    emb = l2_normalize(rng.normal(size=(50, 16))).astype(np.float32)
    i = np.array([0, 3, 3, 48, 7, 6, 0])  # inside a block of 7 rows, across blocks, the last pair, repeats
    j = np.array([1, 4, 40, 49, 13, 7, 1])
    (st,) = all_pairs_stats([emb], lat, lon, block=7, progress=False, keep_pairs=(i, j))
    np.testing.assert_allclose(st.kept, np.einsum("kd,kd->k", emb[i].astype(np.float64), emb[j].astype(np.float64)), atol=1e-6)
    with pytest.raises(ValueError, match="i < j"):
        all_pairs_stats([emb], lat, lon, progress=False, keep_pairs=(np.array([5]), np.array([5])))


def test_pairs_on_both_sides_of_the_near_far_and_bin_edges_are_counted_by_hand():
    # five photos on the equator at 0, 24.99, 5000.02, 4999.98 and 25.01 km east of the first
    # (float32 distances are good to ~1 m here, the margins are 10-20 m). The ten pairs:
    #   (0,1) 24.99 near, display bin [10, 25)      (1,2) 4975.03  [4900, 5000)
    #   (0,2) 5000.02 far, [5000, 5100)             (1,3) 4974.99  [4900, 5000)
    #   (0,3) 4999.98 not far, [4900, 5000)         (1,4) 0.02 near, [0, 1)
    #   (0,4) 25.01 not near, [25, 50)              (2,3) 0.04 near, [0, 1)
    #   (2,4) 4975.01, (3,4) 4974.97: [4900, 5000)
    km = np.array([0.0, 24.99, 5000.02, 4999.98, 25.01])
    lon = np.degrees(km / EARTH_RADIUS_KM)
    lat = np.zeros(5)
    # similarity = cos(angle difference): near pairs 0.995 (0,1), 0.969 (2,3), 0.995 (1,4); far pair 0.99875
    ang = np.array([0.0, 0.1, 0.05, 0.3, 0.2])
    emb = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)
    for block in (2, 5):  # the pairs split over blocks and chunks, or all in one block
        (st,) = all_pairs_stats([emb], lat, lon, block=block, progress=False)
        count = st.binned()["count"]
        assert count[0] == 2 and count[3] == 1 and count[4] == 1  # [0, 1), [10, 25), [25, 50)
        assert count[54] == 5 and count[55] == 1 and count.sum() == 10  # [4900, 5000), [5000, 5100)
        ff = st.false_friends()
        assert (ff["n_near_pairs"], ff["n_far_pairs"]) == (3, 1)
        assert ff["n_false_friends"] == 1  # 0.99875 is above the near pairs' 95th percentile (0.995)
        assert ff["near_p95_sim"] == pytest.approx(np.cos(0.1), abs=2.0 / FINE_SIM_BINS)
    # edges ending at 100 km (sub-bins 0 5 10 20 30 65 100): the six longer pairs count in the last sub-bin
    (st,) = all_pairs_stats([emb], lat, lon, dist_edges=[0.0, 10.0, 30.0, 100.0], progress=False)
    np.testing.assert_array_equal(st.n, [2, 0, 0, 2, 0, 6])


@pytest.mark.parametrize("chunk_pairs", [1, 300])  # 16 and 42 columns per chunk: many chunks per block
def test_chunked_pass_equals_one_chunk_and_keeps_pairs_across_chunks(monkeypatch, chunk_pairs):
    lat, lon = clustered_points(12, 10, seed=2)  # 120 images
    emb = geo_embeddings(lat, lon, 24, signal=1.0, rng=6)
    i, j = random_pairs(120, 400, np.random.default_rng(1))
    (one,) = all_pairs_stats([emb], lat, lon, block=7, progress=False, keep_pairs=(i, j))
    monkeypatch.setattr(pairs_mod, "CHUNK_PAIRS", chunk_pairs)
    (many,) = all_pairs_stats([emb], lat, lon, block=7, progress=False, keep_pairs=(i, j))
    for name in ("n", "hist2d", "near_hist", "far_hist", "kept"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name), err_msg=name)
    # float32 matmuls of other shapes may round a similarity differently (~1e-7): the sums agree to that
    for name in ("s", "s2", "u", "u2", "su"):
        np.testing.assert_allclose(getattr(many, name), getattr(one, name), rtol=1e-6, atol=1e-9, err_msg=name)
    assert many.n_pairs == 120 * 119 // 2 and many.near_hist.sum() > 100
    np.testing.assert_allclose(many.kept, np.einsum("kd,kd->k", emb[i].astype(np.float64), emb[j].astype(np.float64)), atol=1e-6)
