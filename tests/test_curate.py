"""Tests for geosolver.curate: group tables, round-robin selection, clustering, strategies, CLI."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

from geosolver import curate
from geosolver.cli import main
from geosolver.geo import haversine
from geosolver.store import EmbeddingStore, write_store

ENC = {"name": "test-random", "dim": 16}


def _meta_for_groups(sizes: list[int], rng: np.random.Generator) -> pd.DataFrame:
    """Metadata whose ``land_cover`` value ``g<i>`` repeats ``sizes[i]`` times (rows shuffled)."""
    lc = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
    rng.shuffle(lc)
    n = len(lc)
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "lat": rng.uniform(-60, 60, n),
                         "lon": rng.uniform(-179, 179, n), "land_cover": lc})


def _store(tmp_path, meta: pd.DataFrame, emb: np.ndarray | None = None, name: str = "store") -> EmbeddingStore:
    rng = np.random.default_rng(1)
    if emb is None:
        emb = rng.normal(size=(len(meta), ENC["dim"])).astype(np.float32)
    return write_store(tmp_path / name, emb, meta, ENC, shard_size=257)  # several shards on purpose


def _pick_index_within_group(codes_of_picks: np.ndarray) -> np.ndarray:
    """For each pick, how many earlier picks came from the same group (0 = its group's first)."""
    seen: dict = {}
    out = []
    for c in codes_of_picks:
        out.append(seen.get(c, 0))
        seen[c] = seen.get(c, 0) + 1
    return np.array(out)


# ------------------------------------------------------------------------------------------
# group table
# ------------------------------------------------------------------------------------------
def test_group_size_histogram_exact_on_constructed_example():
    # two groups in every bin, plus boundaries: sizes chosen by hand
    sizes = [1, 1, 2, 3, 4, 10, 11, 20, 21, 50, 51, 100, 101, 150, 151, 300]
    meta = _meta_for_groups(sizes, np.random.default_rng(0))
    table = curate.group_table(meta, ["land_cover"])
    assert len(table) == 16
    assert table["n_images"].tolist() == sorted(sizes, reverse=True)
    hist = curate.group_size_histogram(table["n_images"])
    assert hist["bin"].tolist() == ["1", "2-3", "4-10", "11-20", "21-50", "51-100", "101-150", ">150"]
    assert hist["n_groups"].tolist() == [2, 2, 2, 2, 2, 2, 2, 2]
    # images per bin by hand: 1+1, 2+3, 4+10, 11+20, 21+50, 51+100, 101+150, 151+300
    assert hist["n_images"].tolist() == [2, 5, 14, 31, 71, 151, 251, 451]
    assert hist["n_images"].sum() == 976
    assert hist["pct_groups"].sum() == pytest.approx(100.0)


def test_group_table_two_features_and_missing_values_form_their_own_group():
    meta = pd.DataFrame({
        "id": list("abcdefgh"), "lat": [0.0] * 8, "lon": [0.0] * 8,
        "climate": ["A", "A", "A", "B", None, None, np.nan, "B"],
        "soil": [1, 1, 2, 1, 1, 1, 1, 1],
    })
    table = curate.group_table(meta, ["climate", "soil"])
    got = {(r.climate, r.soil): r.n_images for r in table.itertuples()}
    # (A,1)x2, (A,2)x1, (B,1)x2, (<missing>,1)x3 -- None and NaN are the same missing value
    assert got == {("A", "1"): 2, ("A", "2"): 1, ("B", "1"): 2, ("<missing>", "1"): 3}
    assert table["n_images"].iloc[0] == 3


def test_missing_feature_columns_are_skipped_with_a_notice(caplog):
    meta = _meta_for_groups([3, 5], np.random.default_rng(0))
    with caplog.at_level(logging.WARNING, logger="geosolver.curate"):
        table = curate.group_table(meta, curate.DEFAULT_FEATURES)
    assert list(table.columns) == ["land_cover", "n_images"]
    assert sorted(table["n_images"]) == [3, 5]
    assert "cell" in caplog.text and "soil" in caplog.text
    with pytest.raises(curate.CurationError, match=r"geosolver enrich") as e:
        curate.group_table(meta, ["cell", "soil"])
    assert "land_cover" in str(e.value)  # names the columns that exist


def _absent_notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "absent from the metadata" in r.getMessage()]


def test_absent_default_columns_are_noticed_once_per_process(tmp_path, caplog, monkeypatch, capsys):
    """Not asked for (--by not given): one notice per process, not one per call. Asked for: every call."""
    from geosolver.curate import groups

    monkeypatch.setattr(groups, "_NOTICED", set(), raising=False)  # a fresh process
    meta = _meta_for_groups([3, 5, 4], np.random.default_rng(0))
    _store(tmp_path, meta)
    with caplog.at_level(logging.WARNING, logger="geosolver.curate"):
        for _ in range(3):
            assert main(["curate", "stats", str(tmp_path / "store")]) == 0
            curate.group_table(meta)
            curate.select(EmbeddingStore(tmp_path / "store"), 5, strategy="grouped", seed=0)
        assert len(_absent_notices(caplog)) == 1 and "soil" in _absent_notices(caplog)[0]
        caplog.clear()
        for _ in range(2):  # the user asked for soil: say so each time
            assert main(["curate", "stats", str(tmp_path / "store"), "--by", "land_cover,soil"]) == 0
        assert len(_absent_notices(caplog)) == 2 and all("soil" in m for m in _absent_notices(caplog))
    capsys.readouterr()


# ------------------------------------------------------------------------------------------
# round-robin arithmetic
# ------------------------------------------------------------------------------------------
def _naive_round_robin(codes, rank, group_pos, n):
    """Reference: explicit loop, one image per group per round, groups in order."""
    groups = {g: list(np.nonzero(codes == g)[0][np.argsort(rank[codes == g])]) for g in np.unique(codes)}
    order = sorted(groups, key=lambda g: group_pos[g])
    out = []
    while len(out) < n:
        for g in order:
            if groups[g] and len(out) < n:
                out.append(groups[g].pop(0))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_robin_matches_an_explicit_loop(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 30, size=12)
    codes = np.repeat(np.arange(12), sizes)
    rng.shuffle(codes)
    rank = curate.ranks_from_keys(codes, rng.random(codes.size))
    group_pos = rng.permutation(12)
    for n in [1, 5, 12, 13, 50, int(sizes.sum()) - 1, int(sizes.sum())]:
        got = curate.round_robin(codes, rank, group_pos, n)
        np.testing.assert_array_equal(got, _naive_round_robin(codes, rank, group_pos, n))
        np.testing.assert_array_equal(np.bincount(codes[got], minlength=12), curate.contributions(sizes, group_pos, n))


def test_rounds_needed_by_hand():
    sizes = np.array([5, 50, 500])
    # R=12: 5+12+12 = 29 < 30; R=13: 5+13+13 = 31 >= 30
    assert curate.rounds_needed(sizes, 30) == 13
    assert curate.rounds_needed(sizes, 29) == 12
    assert curate.rounds_needed(sizes, 3) == 1
    assert curate.rounds_needed(sizes, 555) == 500


# ------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["grouped-clustered", "grouped"])
def test_round_robin_fairness_in_selection_order(tmp_path, strategy):
    sizes = [1, 3, 7, 25, 60, 140]
    meta = _meta_for_groups(sizes, np.random.default_rng(3))
    store = _store(tmp_path, meta)
    size_of = dict(zip([f"g{i}" for i in range(len(sizes))], sizes))
    n = 60
    res = curate.select(store, n, by=["land_cover"], strategy=strategy, seed=5)
    assert res.rows.size == n and np.unique(res.rows).size == n
    picked = meta["land_cover"].to_numpy()[res.rows]
    k = _pick_index_within_group(picked)
    # the j-th image of a group comes only after every group still holding j images gave j-1
    for p in range(n):
        j = k[p]
        earlier = pd.Series(picked[:p]).value_counts()
        for g, s in size_of.items():
            if s > j:  # group g still lasts in round j
                assert earlier.get(g, 0) >= j, (p, picked[p], g)
    # final counts: groups not exhausted differ by at most one
    counts = pd.Series(picked).value_counts()
    assert counts["g0"] == 1 and counts["g1"] == 3 and counts["g2"] == 7
    rest = [counts[f"g{i}"] for i in (3, 4, 5)]
    assert max(rest) - min(rest) <= 1 and sum(rest) == n - 11


def _two_cluster_embeddings(rng, n_a: int, n_b: int, dim: int = 16, noise: float = 0.05):
    e_a, e_b = np.eye(dim)[0], np.eye(dim)[1]
    a = e_a + noise * rng.normal(size=(n_a, dim))
    b = e_b + noise * rng.normal(size=(n_b, dim))
    a[0] = e_a  # exactly at the centre of cluster A: must be A's first pick
    b[0] = e_b
    return np.concatenate([a, b]).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cluster_diversity_first_two_picks_come_from_both_clusters(tmp_path, seed):
    rng = np.random.default_rng(10)
    n_a, n_b, n_other = 50, 12, 40
    emb = np.concatenate([_two_cluster_embeddings(rng, n_a, n_b), rng.normal(size=(n_other, 16)).astype(np.float32)])
    lc = ["big"] * (n_a + n_b) + [f"o{i % 20}" for i in range(n_other)]  # 20 small groups of 2
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(len(lc))], "lat": np.zeros(len(lc)),
                         "lon": np.zeros(len(lc)), "land_cover": lc})
    store = _store(tmp_path, meta, emb)
    res = curate.select(store, 44, by=["land_cover"], strategy="grouped-clustered", seed=seed, cluster_threshold=20)
    big = [r for r in res.rows if r < n_a + n_b]
    assert len(big) == 4 and res.n_clustered_groups == 1  # 40 small-group images + 4 rounds of "big"
    first_two = {"A" if r < n_a else "B" for r in big[:2]}
    assert first_two == {"A", "B"}
    assert set(big[:2]) == {0, n_a}  # nearest to each cluster centre first


def test_clustering_reads_one_group_at_a_time_and_only_groups_that_need_it(tmp_path, monkeypatch):
    # g0: 30 rows, will be taken whole -> no clustering needed; g1/g2: 200 rows, partly taken
    meta = _meta_for_groups([30, 200, 200], np.random.default_rng(4))
    store = _store(tmp_path, meta)
    calls = []
    orig = EmbeddingStore.embeddings

    def spy(self, rows=None, dtype=np.float32):
        assert rows is not None, "select must not load all embeddings"
        calls.append(np.asarray(rows))
        return orig(self, rows, dtype)

    monkeypatch.setattr(EmbeddingStore, "embeddings", spy)
    res = curate.select(store, 100, by=["land_cover"], strategy="grouped-clustered", seed=0)
    assert res.n_clustered_groups == 2 and len(calls) == 2
    lc = meta["land_cover"].to_numpy()
    for rows in calls:
        assert len(set(lc[rows])) == 1 and lc[rows][0] in ("g1", "g2")
    assert sorted(res.per_group_counts.tolist()) == [30, 35, 35]
    calls.clear()
    for strategy in ("grouped", "cell", "random"):
        curate.select(store, 100, by=["land_cover"], strategy=strategy, seed=0)
    assert calls == []  # other strategies never read embeddings


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    meta = _meta_for_groups([40, 80, 120, 9, 3], np.random.default_rng(7))
    store = _store(tmp_path, meta)
    for strategy in curate.STRATEGIES:
        a = curate.select(store, 70, by=["land_cover"], strategy=strategy, seed=11).rows
        b = curate.select(EmbeddingStore(store.path), 70, by=["land_cover"], strategy=strategy, seed=11).rows
        c = curate.select(store, 70, by=["land_cover"], strategy=strategy, seed=12).rows
        np.testing.assert_array_equal(a, b)
        assert set(a.tolist()) != set(c.tolist()), strategy


def test_random_strategy_follows_the_data_and_grouped_balances(tmp_path):
    meta = _meta_for_groups([900, 100], np.random.default_rng(8))
    store = _store(tmp_path, meta)
    lc = meta["land_cover"].to_numpy()
    r = curate.select(store, 200, strategy="random", seed=1)
    assert r.rows.size == 200 and np.unique(r.rows).size == 200
    share = np.mean(lc[r.rows] == "g0")
    assert 0.8 < share < 0.97  # hypergeometric around 0.9
    g = curate.select(store, 200, by=["land_cover"], strategy="grouped", seed=1)
    assert (lc[g.rows] == "g0").sum() == 100 and (lc[g.rows] == "g1").sum() == 100


def test_cell_strategy_round_robins_over_grid_cells_ignoring_features(tmp_path):
    rng = np.random.default_rng(9)
    # three 10-degree cells with 5, 50 and 500 images; one feature value everywhere
    centres = [(5.0, 5.0)] * 5 + [(25.0, 45.0)] * 50 + [(-35.0, -125.0)] * 500
    lat = np.array([c[0] for c in centres]) + rng.uniform(-4, 4, len(centres))
    lon = np.array([c[1] for c in centres]) + rng.uniform(-4, 4, len(centres))
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(len(lat))], "lat": lat, "lon": lon, "land_cover": "x"})
    store = _store(tmp_path, meta)
    res = curate.select(store, 30, strategy="cell", cell_size=10.0, seed=0)
    # by hand: R = 13 rounds, 5 + 12 + 13 = 30
    cell = np.floor((lat[res.rows] + 90) / 10) * 1000 + np.floor((lon[res.rows] + 180) / 10)
    assert sorted(pd.Series(cell).value_counts().tolist()) == [5, 12, 13]
    assert res.by == ["grid_cell"] and len(res.group_sizes) == 3


def test_size_larger_than_store_takes_everything_once(tmp_path):
    meta = _meta_for_groups([4, 6], np.random.default_rng(0))
    store = _store(tmp_path, meta)
    res = curate.select(store, 100, by=["land_cover"], seed=0)
    assert sorted(res.rows.tolist()) == list(range(10))
    with pytest.raises(curate.CurationError):
        curate.select(store, 5, strategy="nearest")


# ------------------------------------------------------------------------------------------
# coverage helpers
# ------------------------------------------------------------------------------------------
def test_coverage_numbers_against_brute_force():
    rng = np.random.default_rng(0)
    lat_g, lon_g = rng.uniform(-80, 80, 300), rng.uniform(-180, 180, 300)
    lat_q, lon_q = curate.random_land_points(200, seed=3)
    from global_land_mask import globe

    assert globe.is_land(lat_q, lon_q).all()
    brute = haversine(lat_q[:, None], lon_q[:, None], lat_g[None], lon_g[None]).min(axis=1)
    np.testing.assert_allclose(curate.nearest_km(lat_q, lon_q, lat_g, lon_g), brute, rtol=1e-6, atol=1e-6)
    assert curate.entropy_bits(pd.Series(list("abcd") * 5)) == pytest.approx(2.0)
    assert curate.entropy_bits(pd.Series(["a"] * 7)) == pytest.approx(0.0)
    meta = pd.DataFrame({"lat": [1.0, 1.5, 3.0, -89.0], "lon": [1.0, 1.9, 1.0, 170.0], "climate": ["A", "A", "B", "B"]})
    cov = curate.coverage(meta)
    assert cov["cells_covered"] == 3  # (1,1) and (1.5,1.9) share the 2-degree cell [0,2)x[0,2)
    assert cov["climate_entropy_bits"] == pytest.approx(1.0)



def test_out_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    _store(tmp_path, _meta_for_groups([5, 5], np.random.default_rng(0)))
    f = tmp_path / "a-file"
    f.write_text("")
    assert main(["curate", "select", str(tmp_path / "store"), "--size", "4", "--out", str(f), "--by", "land_cover"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err

# ------------------------------------------------------------------------------------------
# end to end through the CLI on an OSV5M-like store
# ------------------------------------------------------------------------------------------
def test_cli_end_to_end_on_osv5m_like_store(tmp_path, capsys):
    rng = np.random.default_rng(21)
    n = 1500
    centres = np.array([[48.0, 2.0], [40.0, -100.0], [-23.0, -47.0], [35.0, 139.0], [-33.0, 151.0]])
    which = rng.choice(len(centres), n, p=[0.5, 0.25, 0.12, 0.08, 0.05])
    lat = np.clip(centres[which, 0] + rng.normal(0, 3, n), -89, 89)
    lon = np.clip(centres[which, 1] + rng.normal(0, 3, n), -179.9, 179.9)
    meta = pd.DataFrame({
        "id": [f"img{i:05d}" for i in range(n)], "lat": lat, "lon": lon,
        "cell": [f"{int(np.floor(a / 2))}_{int(np.floor(o / 2))}" for a, o in zip(lat, lon)],
        "land_cover": rng.integers(0, 17, n), "climate": rng.integers(0, 30, n).astype(float),
        "soil": rng.integers(0, 10, n),
    })
    meta.loc[rng.choice(n, 40, replace=False), "climate"] = np.nan
    emb = rng.normal(size=(n, ENC["dim"])).astype(np.float32)
    write_store(tmp_path / "osv", emb, meta, ENC, shard_size=400)

    assert main(["curate", "stats", str(tmp_path / "osv"), "--by", "cell,land_cover"]) == 0
    out = capsys.readouterr().out
    n_groups = meta.groupby(["cell", "land_cover"]).ngroups
    assert f"{n:,} images in {n_groups:,} groups by cell,land_cover" in out

    gal = tmp_path / "gallery"
    rc = main(["curate", "select", str(tmp_path / "osv"), "--size", "120", "--out", str(gal), "--seed", "3",
               "--by", "cell,land_cover,climate,soil", "--land-points", "300"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "chose 120 images" in out and "land_median_km" in out
    g = EmbeddingStore(gal)
    assert len(g) == 120 and g.verify() == []
    idx = pd.Index(meta["id"]).get_indexer(g.metadata["id"])
    assert (idx >= 0).all() and np.unique(idx).size == 120
    np.testing.assert_array_equal(g.embeddings(), EmbeddingStore(tmp_path / "osv").embeddings(idx))
    cur = json.loads((gal / "curation.json").read_text())
    assert cur["rows_out"] == 120 and sum(r["n_taken"] for r in cur["per_group_taken"]) == 120
    assert cur["groups"] == meta.groupby(["cell", "land_cover", "climate", "soil"], dropna=False).ngroups
    cfg = json.loads((gal / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["strategy"] == "grouped-clustered" and cfg["size"] == 120
    assert cfg["command"] == "curate select" and {"geosolver_version", "argv", "created"} <= set(cfg)
    cov = json.loads((gal / "coverage.json").read_text())
    assert cov["after"]["images"] == 120 and cov["before"]["images"] == n
    assert cov["after"]["cells_covered"] <= cov["before"]["cells_covered"]
    assert cov["after"]["land_median_km"] >= cov["before"]["land_median_km"]  # subset can only be farther
    assert (gal / "map.png").stat().st_size > 1000

    # refusing to overwrite, and a clear error for absent features
    assert main(["curate", "select", str(tmp_path / "osv"), "--size", "10", "--out", str(gal)]) == 2
    assert main(["curate", "stats", str(tmp_path / "osv"), "--by", "koppen"]) == 2
    assert "geosolver enrich" in capsys.readouterr().err
