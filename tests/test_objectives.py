"""The published baselines and the founding objective's variants (issue #15): Rank-N-Contrast,
soft-contrastive, the consistency term's falling range — math on constructed inputs, presets and
settings, and short CLI training runs with the tiny CLIP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geosolver.train import OBJECTIVE_PRESETS, ObjectiveWeights, TrainConfig
from geosolver.train.objectives import (
    TargetCurve,
    combined_loss,
    distance_consistency_loss,
    rank_n_contrast_loss,
    soft_contrastive_loss,
    soft_contrastive_targets,
)

torch.set_num_threads(1)

R_EARTH = 6371.0
KM_PER_DEG = math.pi * R_EARTH / 180.0


# ----------------------------------------------------------------------------------------------
# constructed data
# ----------------------------------------------------------------------------------------------
def _places(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n locations: half in 4 tight clusters (near pairs exist), half spread over the globe."""
    rng = np.random.default_rng(seed)
    centres = np.array([[48.0, 2.0], [-33.0, 151.0], [35.0, 139.0], [40.0, -74.0]])
    k = n // 2
    c = centres[np.arange(k) % 4] + rng.normal(0, 0.5, (k, 2))
    lat = np.concatenate([c[:, 0], rng.uniform(-60, 70, n - k)])
    lon = np.concatenate([c[:, 1], rng.uniform(-180, 180, n - k)])
    return torch.tensor(lat), torch.tensor(lon)


def _location_embeddings(lat: torch.Tensor, lon: torch.Tensor, dim: int = 8, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """The unit 3-D vector of (lat, lon), padded to ``dim`` with small noise, normalised: cosine
    similarity falls with great-circle distance."""
    la, lo = torch.deg2rad(lat.double()), torch.deg2rad(lon.double())
    xyz = torch.stack([torch.cos(la) * torch.cos(lo), torch.cos(la) * torch.sin(lo), torch.sin(la)], dim=1)
    g = torch.Generator().manual_seed(seed)
    e = torch.cat([xyz, torch.zeros(len(lat), dim - 3, dtype=torch.float64)], dim=1)
    e = e + noise * torch.randn(e.shape, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(e, dim=1)


def _haversine(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * R_EARTH * math.asin(math.sqrt(min(1.0, h)))


def _rnc_by_loops(emb: torch.Tensor, lat: torch.Tensor, lon: torch.Tensor, tau: float) -> float:
    """Rank-N-Contrast written out from the formula, one anchor, positive and set member at a time."""
    n = emb.shape[0]
    pts = [(float(lat[i]), float(lon[i])) for i in range(n)]
    e = emb.tolist()
    sim = lambda a, b: sum(x * y for x, y in zip(e[a], e[b]))  # noqa: E731
    total = 0.0
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            dij = _haversine(pts[i], pts[j])
            denom = 0.0
            for k in range(n):
                if k != i and _haversine(pts[i], pts[k]) >= dij:
                    denom += math.exp(sim(i, k) / tau)
            total += -math.log(math.exp(sim(i, j) / tau) / denom)
    return total / (n * (n - 1))


# ----------------------------------------------------------------------------------------------
# Rank-N-Contrast and soft-contrastive on constructed data
# ----------------------------------------------------------------------------------------------
LOSSES = {
    "rnc": lambda e, la, lo: rank_n_contrast_loss(e, la, lo, temperature=0.1),
    "soft": lambda e, la, lo: soft_contrastive_loss(e, la, lo, scale_km=500.0, temperature=0.1),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_embeddings_that_follow_the_locations_have_lower_loss_than_shuffled_ones(name):
    lat, lon = _places(48)
    good = _location_embeddings(lat, lon)
    loss = LOSSES[name]
    lg = float(loss(good, lat, lon))
    g = torch.Generator().manual_seed(1)
    shuffled = [float(loss(good[torch.randperm(48, generator=g)], lat, lon)) for _ in range(5)]
    assert all(lg < ls - 0.05 * abs(ls) for ls in shuffled), (name, lg, shuffled)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_are_finite_with_duplicate_locations_zero_distances_and_two_samples(name):
    loss = LOSSES[name]
    lat, lon = _places(12)
    cases = {
        "duplicates": (torch.cat([lat[:6], lat[:6]]), torch.cat([lon[:6], lon[:6]])),  # every place twice
        "one place": (torch.full((5,), 10.0, dtype=torch.float64), torch.full((5,), 20.0, dtype=torch.float64)),
        "two samples": (lat[:2], lon[:2]),
        "two at one place": (lat[:1].repeat(2), lon[:1].repeat(2)),
    }
    g = torch.Generator().manual_seed(0)
    for case, (la, lo) in cases.items():
        for raw in (torch.randn(len(la), 8, generator=g), torch.ones(len(la), 8)):  # random, and identical embeddings
            raw = raw.clone().requires_grad_(True)
            total, parts = combined_loss(raw, la, lo, ObjectiveWeights(**{name: 1.0}), temperature=0.1)
            total.backward()
            assert math.isfinite(parts[name]) and torch.isfinite(raw.grad).all(), (name, case)
    # two samples: anchor i's only positive is j, and S_ij = {j}: Rank-N-Contrast is exactly 0
    e = torch.randn(2, 8, generator=g, dtype=torch.float64)
    assert float(rank_n_contrast_loss(torch.nn.functional.normalize(e, dim=1), lat[:2], lon[:2])) == pytest.approx(0.0, abs=1e-12)


def test_rank_n_contrast_matches_a_loop_written_from_the_formula():
    g = torch.Generator().manual_seed(3)
    lat = torch.tensor([10.0, 10.5, -20.0, 40.0], dtype=torch.float64)
    lon = torch.tensor([20.0, 20.0, 100.0, -70.0], dtype=torch.float64)
    for tau in (0.07, 0.5, 2.0):
        emb = torch.nn.functional.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
        assert float(rank_n_contrast_loss(emb, lat, lon, tau)) == pytest.approx(_rnc_by_loops(emb, lat, lon, tau), abs=1e-5, rel=1e-5)
    # ties (two photos at one place, and a point equidistant from two others) share a denominator
    lat_t = torch.tensor([0.0, 0.0, 0.0, 0.0, 30.0, 5.0], dtype=torch.float64)
    lon_t = torch.tensor([0.0, 0.0, 10.0, -10.0, 50.0, 5.0], dtype=torch.float64)
    emb = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    assert float(rank_n_contrast_loss(emb, lat_t, lon_t, 0.2)) == pytest.approx(_rnc_by_loops(emb, lat_t, lon_t, 0.2), abs=1e-5, rel=1e-5)


def test_combined_loss_adds_the_new_terms_with_their_weights_and_settings():
    lat, lon = _places(16, seed=4)
    raw = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
    z = torch.nn.functional.normalize(raw, dim=1)
    w = ObjectiveWeights(rnc=0.7, soft=0.3)
    total, parts = combined_loss(raw, lat, lon, w, temperature=0.2, soft_scale_km=300.0)
    assert set(parts) == {"rnc", "soft"}
    assert parts["rnc"] == pytest.approx(float(rank_n_contrast_loss(z, lat, lon, 0.2)), rel=1e-6)
    assert parts["soft"] == pytest.approx(float(soft_contrastive_loss(z, lat, lon, 300.0, 0.2)), rel=1e-6)
    assert parts["soft"] != pytest.approx(float(soft_contrastive_loss(z, lat, lon, 500.0, 0.2)), rel=1e-3)  # the scale matters
    assert float(total) == pytest.approx(0.7 * parts["rnc"] + 0.3 * parts["soft"], rel=1e-6)


def test_rank_n_contrast_handles_a_batch_of_256_quickly():
    import time

    lat, lon = _places(256, seed=2)
    raw = torch.randn(256, 64, requires_grad=True)
    t = time.perf_counter()
    loss = rank_n_contrast_loss(torch.nn.functional.normalize(raw, dim=1), lat, lon, 0.07)
    loss.backward()
    assert time.perf_counter() - t < 5.0 and torch.isfinite(raw.grad).all()


def test_soft_targets_put_all_mass_on_the_nearest_neighbour_as_the_scale_goes_to_zero():
    # Three points on the equator at lon 0, 1, 3 degrees: distances 1°, 2°, 3° of arc.
    lat = torch.zeros(3, dtype=torch.float64)
    lon = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    q0 = soft_contrastive_targets(lat, lon, scale_km=1e-3)
    np.testing.assert_array_equal(q0.numpy(), [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    # a finite scale, by hand: q_ij = exp(-d_ij/s) / sum_{k != i} exp(-d_ik/s)
    s, d1, d2, d3 = 150.0, KM_PER_DEG, 2 * KM_PER_DEG, 3 * KM_PER_DEG
    e = lambda d: math.exp(-d / s)  # noqa: E731
    by_hand = [
        [0.0, e(d1) / (e(d1) + e(d3)), e(d3) / (e(d1) + e(d3))],
        [e(d1) / (e(d1) + e(d2)), 0.0, e(d2) / (e(d1) + e(d2))],
        [e(d3) / (e(d3) + e(d2)), e(d2) / (e(d3) + e(d2)), 0.0],
    ]
    np.testing.assert_allclose(soft_contrastive_targets(lat, lon, s).numpy(), by_hand, rtol=1e-9)
    # the loss is the cross-entropy of those targets against softmax_{j != i}(s_ij / tau)
    emb = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.8, 0.6], [-0.3, 1.0]], dtype=torch.float64), dim=1)
    sims, tau = (emb @ emb.T).tolist(), 0.3
    ce = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        z = sum(math.exp(sims[i][j] / tau) for j in others)
        ce -= sum(by_hand[i][j] * math.log(math.exp(sims[i][j] / tau) / z) for j in others)
    assert float(soft_contrastive_loss(emb, lat, lon, s, tau)) == pytest.approx(ce / 3, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# the consistency term's falling range
# ----------------------------------------------------------------------------------------------
def test_consistency_max_km_leaves_far_pairs_out_entirely():
    # Samples 0-2 a few km apart with identical embeddings (similarity exactly 1 = the curve's
    # near value); sample 3 on another continent, its pairs far off the curve (which says 0 there).
    lat = torch.tensor([10.0, 10.01, 10.02, -30.0], dtype=torch.float64)
    lon = torch.tensor([20.0, 20.0, 20.01, 120.0], dtype=torch.float64)
    knots, sims = np.array([0.0, 100.0, 200.0, 20000.0]), np.array([1.0, 1.0, 0.0, 0.0])  # 1 up to 100 km, 0 beyond 200 km
    curve = TargetCurve(knots, sims, sims)
    emb = torch.tensor([[1.0, 0.0, 0.0]] * 3 + [[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    uncapped = distance_consistency_loss(emb, lat, lon, curve)
    (g_all,) = torch.autograd.grad(uncapped, emb)
    assert float(uncapped.detach()) > 0.1 and float(g_all[3].abs().sum()) > 0  # the far pairs deviate and pull
    capped = distance_consistency_loss(emb, lat, lon, curve, max_km=2000.0)
    (g_cap,) = torch.autograd.grad(capped, emb)
    assert float(capped.detach()) == 0.0 and torch.equal(g_cap, torch.zeros_like(g_cap))  # far pairs contribute nothing
    # near pairs still count: move sample 1 off the curve and they pull, sample 3 still does not
    emb2 = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    (g2,) = torch.autograd.grad(distance_consistency_loss(emb2, lat, lon, curve, max_km=2000.0), emb2)
    assert float(g2[1].abs().sum()) > 0 and torch.equal(g2[3], torch.zeros(3, dtype=torch.float64))
    # no pair close enough: 0, attached to the graph
    none = distance_consistency_loss(emb, lat, lon, curve, max_km=0.1)
    assert float(none.detach()) == 0.0 and none.requires_grad
    # and combined_loss passes the cap through
    _, parts = combined_loss(emb.detach(), lat, lon, ObjectiveWeights(consistency=1.0), target=curve, consistency_max_km=2000.0)
    assert parts["consistency"] == 0.0


# ----------------------------------------------------------------------------------------------
# settings: presets, weights, numbers
# ----------------------------------------------------------------------------------------------
def test_presets_set_the_new_weights_and_explicit_weights_win():
    from geosolver.errors import TrainError

    w = TrainConfig(out="o", root="r", objective="rank-n-contrast").weights()
    assert (w.rnc, w.soft, w.contrastive, w.consistency, w.distill) == (1.0, 0.0, 0.0, 0.0, 0.1)
    w = TrainConfig(out="o", root="r", objective="soft-contrastive", w_rnc=0.5, w_soft=2.0).weights()
    assert (w.rnc, w.soft) == (0.5, 2.0) and w.active() == ["distill", "rnc", "soft"]
    assert set(OBJECTIVE_PRESETS) >= {"geo-contrastive", "distance-consistency", "both", "rank-n-contrast", "soft-contrastive"}
    cfg = TrainConfig(out="o", root="r", objective="distance-consistency", sharpen=2.0, consistency_max_km=2000.0)
    assert cfg.weights().consistency == 1.0 and cfg.consistency_max_km == 2000.0 and cfg.soft_scale_km == 500.0
    for bad in (dict(w_rnc=-1.0), dict(w_soft=float("nan")), dict(soft_scale_km=0.0), dict(consistency_max_km=-5.0),
                dict(consistency_max_km=float("inf"))):
        name = next(iter(bad))
        with pytest.raises(TrainError, match="--" + name.replace("_", "-")):
            TrainConfig(out="o", root="r", **bad)


def test_cli_parses_the_new_objectives_and_settings():
    from geosolver.cli import build_parser
    from geosolver.cli.train_cmd import train_config

    def parse(*argv):
        return train_config(build_parser().parse_args(["train", "--data", "r", "--out", "o", *argv]))

    cfg = parse("--objective", "rank-n-contrast", "--w-soft", "0.5", "--soft-scale-km", "300", "--consistency-max-km", "2000")
    assert (cfg.objective, cfg.w_soft, cfg.soft_scale_km, cfg.consistency_max_km) == ("rank-n-contrast", 0.5, 300.0, 2000.0)
    assert parse("--objective", "soft-contrastive").weights().soft == 1.0
    assert parse().consistency_max_km is None and parse().w_rnc is None


# ----------------------------------------------------------------------------------------------
# short CLI training runs
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geo_images(tmp_path_factory) -> tuple[Path, Path]:
    """96 PNGs (32 px) at 8 places on two continents (places ~300-3000 km apart, photos ~30 km
    around them), coloured by location plus noise. Returns ``(root, csv)``."""
    root = tmp_path_factory.mktemp("objective_images")
    rng = np.random.default_rng(0)
    places = [(48.5, 2.5), (45.5, 9.0), (41.0, -3.5), (52.5, 13.5), (40.5, -74.5), (34.0, -118.0), (41.9, -87.6), (29.7, -95.4)]
    rows = []
    for i in range(96):
        p = i % len(places)
        la, lo = places[p][0] + rng.normal(0, 0.3), places[p][1] + rng.normal(0, 0.3)
        colour = np.array([(la - 25) / 30, (lo + 125) / 140, (p % 3) / 2]) * 255
        arr = np.clip(colour + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"i{i:03d}.png")
        rows.append({"path": f"i{i:03d}.png", "lat": la, "lon": lo})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root, root / "metadata.csv"


@pytest.mark.parametrize("objective,part", [("rank-n-contrast", "rnc"), ("soft-contrastive", "soft")])
def test_cli_training_lowers_the_new_objectives(tmp_path, geo_images, tiny_clip_dir, objective, part, monkeypatch):
    from geosolver.cli import main as cli_main
    from geosolver.train import loop
    from geosolver.train.plots import loss_series, read_train_log

    seen = []  # the settings each step hands the loss
    real = loop.combined_loss
    monkeypatch.setattr(loop, "combined_loss", lambda *a, **kw: (seen.append(kw), real(*a, **kw))[1])
    root, csv = geo_images
    out = tmp_path / objective
    rc = cli_main([
        "train", "--root", str(root), "--csv", str(csv), "--model", str(tiny_clip_dir), "--objective", objective,
        "--train", "projection", "--steps", "20", "--batch-size", "32", "--group-size", "4", "--cell-deg", "2",
        "--lr", "2e-2", "--warmup-steps", "0", "--w-distill", "0", "--temperature", "0.1", "--val-fraction", "0",
        "--soft-scale-km", "400", "--consistency-max-km", "1500",
        "--device", "cpu", "--num-workers", "0", "--cache-images", "--out", str(out), "--no-progress",
    ])
    assert rc == 0
    assert len(seen) == 20 and all((kw["temperature"], kw["soft_scale_km"], kw["consistency_max_km"]) == (0.1, 400.0, 1500.0) for kw in seen)
    steps, _ = read_train_log(out / "train_log.jsonl")
    losses = [r["parts"][part] for r in steps]
    assert len(losses) == 20 and all(set(r["parts"]) == {part} for r in steps)
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first - 0.1 * abs(first), (objective, losses)  # seen: -22% (rnc), -16% (soft)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["objective"] == objective and cfg["weights"][part] == 1.0
    assert sum(cfg["weights"][k] for k in ("contrastive", "consistency", "uniformity", "distill", "rnc", "soft")) == 1.0
    assert list(loss_series(steps, cfg["weights"])) == ["total", part]  # training.png draws the term
    assert (out / "training.png").is_file()
