"""Location heads (geosolver.heads) on hand-made cases whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geosolver.errors import HeadError
from geosolver.heads import Geocells, HeadConfig, load_head, smooth_targets, train_head
from geosolver.locate import Neighbours, aggregate

from helpers_heads import PLACES, R, cluster_store, km, small_cfg


# ---------------------------------------------------------------------------------------- cells
def test_geocells_hold_between_half_and_max_points_and_every_point_falls_in_its_own_cell():
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(48, 2, 300), rng.uniform(-60, 70, 100)])
    lon = np.concatenate([rng.normal(2, 2, 300), rng.uniform(-180, 180, 100)])
    cells = Geocells.build(lat, lon, max_per_cell=40)
    assert cells.count.sum() == 400 and cells.count.max() <= 40 and cells.count.min() >= 20
    got = np.bincount(cells.cell_of(lat, lon), minlength=len(cells))
    np.testing.assert_array_equal(got, cells.count)
    # dense Paris area gets small cells, so many of them: >= 300/40 cells
    assert len(np.unique(cells.cell_of(lat[:300], lon[:300]))) >= 8
    # any point on the sphere has a cell, and the representative point lies in its own cell
    assert set(np.unique(cells.cell_of(np.array([89.9, -89.9, 0.0]), np.array([-180.0, 179.9, 0.0])))) <= set(range(len(cells)))
    np.testing.assert_array_equal(cells.cell_of(cells.lat, cells.lon), np.arange(len(cells)))


def test_a_point_on_a_cut_belongs_to_the_upper_side():
    # two pairs 2° of latitude apart, at most 2 per cell: one cut, at latitude (0.1 + 2.0) / 2 = 1.05
    cells = Geocells.build(np.array([0.0, 0.1, 2.0, 2.1]), np.array([5.0, 5.0, 5.0, 5.0]), max_per_cell=2)
    assert len(cells) == 2 and cells.split_at[0] == pytest.approx(1.05)
    low, high = cells.cell_of(np.array([0.0, 2.0]), np.array([5.0, 5.0]))
    assert low != high
    assert cells.cell_of(np.array([1.05, 1.0499]), np.array([5.0, 5.0])).tolist() == [high, low]


def test_label_smoothing_targets_match_hand_computed_values():
    # three cell points on the equator at lon 0, 1, 3 degrees; the truth at lon 0.2 (its cell: 0)
    deg = math.pi * R / 180
    t = smooth_targets(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64),
                       torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64),
                       torch.tensor([0]), tau_km=75.0)[0].numpy()
    d = np.array([0.2, 0.8, 2.8]) * deg  # km from the truth to each cell point
    q = np.exp(-(d - d[0]) / 75.0)
    np.testing.assert_allclose(t, q / q.sum(), rtol=1e-9)
    assert t[0] == pytest.approx(1 / (1 + math.exp(-0.6 * deg / 75) + math.exp(-2.6 * deg / 75)), rel=1e-9)


@pytest.mark.parametrize("kind", ["cells", "flow"])
def test_a_head_trained_on_separated_clusters_predicts_each_clusters_place(tmp_path, kind):
    store, queries = cluster_store(tmp_path / "g")
    res = train_head(small_cfg(store, tmp_path / kind, kind, **({"epochs": 40, "hidden": 64} if kind == "flow" else {})), progress=False)
    head = load_head(tmp_path / kind)
    g = head.predict(queries)
    err = km(g.lat, g.lon, np.array([p[0] for p in PLACES]), np.array([p[1] for p in PLACES]))
    # the places are >= 6000 km apart; each cluster's photos lie within ~50 km of its place. The
    # cell head answers with a training location of the right cell; the small, briefly trained
    # flow with a 300 km kernel lands in the right cluster, less precisely
    assert np.all(err < (150 if kind == "cells" else 800)), err
    assert res.best_val_geoscore > (4000 if kind == "cells" else 3000)


def test_refinement_never_leaves_the_top_cells(tmp_path):
    store, queries = cluster_store(tmp_path / "g")
    train_head(small_cfg(store, tmp_path / "c", "cells", epochs=2), progress=False)  # barely trained: spread-out probabilities
    head = load_head(tmp_path / "c")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    g_lat, g_lon = store.coords()
    rows = rng.integers(0, len(g_lat), (40, 12))
    nb = Neighbours.of_rows(rng.uniform(0.2, 0.9, (40, 12)), rows, g_lat, g_lon)
    for top_n in (1, 2, 3):
        v = head.refine(emb, nb, top_n=top_n, radius_km=20000.0)  # a huge radius averages across cells
        top = np.argsort(-head.cell_probs(emb), axis=1, kind="stable")[:, :top_n]
        assert (head.cells.cell_of(v.lat, v.lon)[:, None] == top).any(axis=1).all()


@pytest.mark.parametrize("kind", ["cells", "flow"])
def test_head_weight_zero_is_exactly_the_plain_vote(tmp_path, kind):
    from geosolver.prior import vote_factors

    store, queries = cluster_store(tmp_path / "g")
    train_head(small_cfg(store, tmp_path / kind, kind, epochs=3), progress=False)
    head = load_head(tmp_path / kind, weight=0.0)
    g_lat, g_lon = store.coords()
    rng = np.random.default_rng(2)
    nb = Neighbours.of_rows(np.sort(rng.uniform(0.1, 0.9, (4, 10)))[:, ::-1], rng.integers(0, len(g_lat), (4, 10)), g_lat, g_lon)
    for strategy in ("nn", "weighted-mean", "densest"):
        plain = nb.vote(strategy)
        fused = nb.vote(strategy, prior=vote_factors(head, queries, nb.lat, nb.lon))
        for a, b in zip(plain, fused):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(aggregate(nb.sims, nb.lat, nb.lon, strategy, prior=vote_factors(head.with_weight(4.0), queries, nb.lat, nb.lon))[2],
                                  plain.confidence) or strategy == "nn"


def test_a_head_prior_overrules_a_lookalike_in_a_cluster_the_head_rules_out(tmp_path):
    store, queries = cluster_store(tmp_path / "g")
    train_head(small_cfg(store, tmp_path / "c", "cells"), progress=False)
    head = load_head(tmp_path / "c", weight=1.0)
    from geosolver.prior import vote_factors

    # query 0 is Oslo's photo; its best neighbour is a look-alike in Sydney, three weaker ones in Oslo
    lat = np.array([[PLACES[3][0], 59.9, 59.95, 59.85]])
    lon = np.array([[PLACES[3][1], 10.7, 10.8, 10.75]])
    nb = Neighbours(np.array([[0.95, 0.8, 0.8, 0.8]], np.float32), np.arange(4)[None], lat, lon)
    plain = nb.vote("densest")
    fused = nb.vote("densest", prior=vote_factors(head, queries[:1], nb.lat, nb.lon))
    assert km(plain.lat[0], plain.lon[0], *PLACES[3]) < 10
    assert km(fused.lat[0], fused.lon[0], *PLACES[0]) < 30


# --------------------------------------------------------------------------------------- resume
def test_a_killed_head_training_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a training subprocess after it saved a state, rerun it: the weights equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store, _ = cluster_store(tmp_path / "g", n_per=150)
    args = ["head", "train", "--gallery", str(store.path), "--kind", "cells", "--epochs", "8", "--batch-size", "16",
            "--hidden", "64", "--max-per-cell", "30", "--device", "cpu", "--save-every", "3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(p) for p in sys.path if p])}
    cmd = [sys.executable, "-m", "geosolver"]
    assert subprocess.run(cmd + args + ["--out", str(tmp_path / "full")], env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(cmd + args + ["--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.pt"
    t0 = time.time()
    while not state.exists() and time.time() - t0 < 600 and proc.poll() is None:  # a busy machine starts python slowly
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no state was saved before the kill"
    assert not (tmp_path / "killed" / "head.json").exists(), "the run finished before it was killed: make it longer"
    killed_at = torch.load(state, weights_only=True)["step"]
    done = subprocess.run(cmd + args + ["--out", str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert killed_at > 0 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(tmp_path / "full" / "state.pt", weights_only=True)["model"]
    sb = torch.load(state, weights_only=True)["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_an_out_with_a_finished_head_or_another_runs_state_is_refused(tmp_path):
    store, _ = cluster_store(tmp_path / "g")
    cfg = small_cfg(store, tmp_path / "h", "cells", epochs=1)
    train_head(cfg, progress=False)
    with pytest.raises(HeadError, match="already holds a trained head"):
        train_head(cfg, progress=False)
    (tmp_path / "h" / "head.json").unlink()
    with pytest.raises(HeadError, match="tau_km"):
        train_head(small_cfg(store, tmp_path / "h", "cells", epochs=1, tau_km=10.0), progress=False)


def test_evaluate_with_a_head_reports_knn_head_fused_and_refined_rows_in_one_run(tmp_path):
    from geosolver.cli import main as cli_main
    import json

    store, _ = cluster_store(tmp_path / "g")
    queries, _ = cluster_store(tmp_path / "q", n_per=10, seed=5, prefix="q")  # other photos of the same four places
    train_head(small_cfg(store, tmp_path / "c", "cells"), progress=False)
    out = tmp_path / "run"
    assert cli_main(["evaluate", "--queries", str(queries.path), "--gallery", str(store.path), "--strategy", "densest", "--k", "10",
                     "--head", str(tmp_path / "c"), "--head-weight", "0,1", "--bootstrap", "20", "--no-plots", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    rows = {(r["strategy"], r["prior"], r["prior_weight"]): r for r in res["rows"]}
    assert set(rows) == {("densest", "none", None), ("densest", "head", 0.0), ("densest", "head", 1.0), ("densest", "refine", None),
                         ("head-cells", "none", None)}
    assert rows[("densest", "head", 0.0)]["mean_km"] == rows[("densest", "none", None)]["mean_km"]  # λ = 0: the plain vote
    # every query's photo lies within ~50 km of its place and the places are >= 6000 km apart:
    # the head picks the right cluster's cell (its point <= ~100 km from the photo) for all 40
    assert rows[("head-cells", "none", None)]["acc@750km"] == 1.0 and rows[("head-cells", "none", None)]["median_km"] < 150
    assert all(len(r["geoscore_ci95"]) == 2 for r in res["rows"])
    assert res["config"]["head"]["kind"] == "cells" and res["config"]["head"]["weights"] == [0.0, 1.0]


def test_study_step_trains_both_heads_and_tabulates_knn_heads_and_fused(tmp_path):
    from geosolver.heads.study import study_step

    store, _ = cluster_store(tmp_path / "g")
    queries, _ = cluster_store(tmp_path / "q", n_per=5, seed=7, prefix="q")
    res = study_step(store.path, queries.path, tmp_path / "study", device="cpu", epochs=3, batch_size=32, hidden=32, max_per_cell=20,
                     samples=16, ode_steps=4, blocks=1)
    methods = [r["method"] for r in res["rows"]]
    knn = "densest k=10 T=0.05 r=500km"
    assert methods == [knn, f"{knn} +head prior λ=1 (cells)", f"{knn} in the head's top cells", "head-cells",
                       f"{knn} +head prior λ=1 (flow)", "head-flow"]
    assert res["markdown"].count("\n") == len(methods) + 1
    assert all((tmp_path / "study" / f"head-{k}" / "head.json").exists() for k in ("cells", "flow"))


def test_cli_locate_with_a_head_answers_with_the_head_or_fuses_it(tmp_path, capsys):
    """Photos coloured by place (histogram encoder): the head's own guess is the photo's place."""
    import json

    import pandas as pd
    from PIL import Image

    from geosolver.cli import main as cli_main
    from geosolver.encoders import load_encoder
    from geosolver.store import write_store

    enc = load_encoder("histogram")
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    rng = np.random.default_rng(0)
    imgs, lat, lon = [], [], []
    for (la, lo), c in zip(PLACES, colours):
        for _ in range(25):
            px = np.clip(np.array(c) + rng.normal(0, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
            imgs.append(Image.fromarray(px))
            lat.append(la + rng.normal(0, 0.2))
            lon.append(lo + rng.normal(0, 0.2))
    g = write_store(tmp_path / "g", enc.embed_images(imgs), pd.DataFrame({"id": [f"g{i}" for i in range(100)], "lat": lat, "lon": lon}),
                    enc.identity())
    assert cli_main(["head", "train", "--gallery", str(g.path), "--kind", "cells", "--out", str(tmp_path / "h"), "--epochs", "15",
                     "--batch-size", "16", "--hidden", "32", "--max-per-cell", "20", "--device", "cpu"]) == 0
    photo = tmp_path / "blue.png"
    Image.new("RGB", (24, 24), colours[2]).save(photo)
    base = ["locate", str(photo), "--gallery", str(g.path), "--head", str(tmp_path / "h"), "--json"]
    capsys.readouterr()
    assert cli_main(base) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["strategy"] == "head-cells" and km(alone["lat"], alone["lon"], *PLACES[2]) < 100
    assert cli_main(base + ["--fuse", "--head-weight", "2"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert fused["strategy"] == "densest" and km(fused["lat"], fused["lon"], *PLACES[2]) < 100
