"""Fine-tuning: objective math on constructed inputs, the same-cell sampler, training runs with a
tiny random CLIP on generated location-dependent images, saving/reloading, LoRA merge, collapse stop."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geosolver.train import CollapseError, TrainConfig, train
from geosolver.train.objectives import (
    TargetCurve,
    distance_bin_weights,
    distance_consistency_loss,
    geo_contrastive_loss,
    interp1d,
    sharpen_values,
    uniformity_loss,
)
from geosolver.train.sampler import CellGroupBatchSampler

torch.set_num_threads(1)

KM_PER_DEG = math.pi * 6371.0 / 180.0  # great-circle km per degree of latitude
CENTRES = [(48.5, 2.5), (-33.5, 151.5), (35.5, 139.5), (40.5, -74.5)]


# ----------------------------------------------------------------------------------------------
# objectives on constructed inputs
# ----------------------------------------------------------------------------------------------
def _meridian_points(n: int, step_deg: float = 1.0):
    lat = torch.arange(n, dtype=torch.float64) * step_deg
    return lat, torch.zeros(n, dtype=torch.float64)


def _circle_embeddings(n: int, alpha: float, dim: int = 8) -> torch.Tensor:
    """Unit vectors e_i = (cos iα, sin iα, 0, ...): e_i·e_j = cos(α|i−j|)."""
    th = torch.arange(n, dtype=torch.float64) * alpha
    e = torch.zeros(n, dim, dtype=torch.float64)
    e[:, 0], e[:, 1] = torch.cos(th), torch.sin(th)
    return e


def test_distance_consistency_is_zero_exactly_on_the_curve_and_positive_off_it():
    n, alpha = 8, 0.2  # similarities cos(0.2·k) fall with k = |i−j| while 0.2·7 < π
    lat, lon = _meridian_points(n)
    knots = np.arange(n) * KM_PER_DEG  # pair distance of |i−j| = k on the meridian
    curve = TargetCurve(knots, np.cos(alpha * np.arange(n)), np.cos(alpha * np.arange(n)))
    emb = _circle_embeddings(n, alpha)
    assert float(distance_consistency_loss(emb, lat, lon, curve)) == pytest.approx(0.0, abs=1e-12)
    # Off the curve by a known amount: every pair similarity is cos(0.3k) instead of cos(0.2k).
    off = _circle_embeddings(n, 0.3)
    i, j = np.triu_indices(n, 1)
    k = j - i
    err2 = (np.cos(0.3 * k) - np.cos(0.2 * k)) ** 2
    # Balanced weights over the default bins: distances k·111 km fall in bins by k.
    edges = np.array([0, 1, 5, 25, 100, 250, 500, 1000, 2500, 5000, 10000, 20100.0])
    b = np.searchsorted(edges, k * KM_PER_DEG, side="right") - 1
    w = 1.0 / np.bincount(b)[b]
    expected = float((w * err2).sum() / w.sum())
    assert float(distance_consistency_loss(off, lat, lon, curve)) == pytest.approx(expected, rel=1e-6)
    assert expected > 1e-3


def test_bin_reweighting_gives_every_distance_bin_equal_total_weight():
    d = torch.tensor([0.5] * 10 + [60.0] * 3 + [3000.0] + [12000.0] * 6, dtype=torch.float64)
    w = distance_bin_weights(d, [0, 25, 100, 5000, 20100])
    assert float(w.sum()) == pytest.approx(1.0)
    per_bin = [float(w[:10].sum()), float(w[10:13].sum()), float(w[13:14].sum()), float(w[14:].sum())]
    assert per_bin == pytest.approx([0.25] * 4)
    assert float(w[0]) == pytest.approx(0.025) and float(w[13]) == pytest.approx(0.25)


def test_contrastive_loss_is_lower_when_positives_are_more_similar_than_negatives():
    # Two places 5000+ km apart, two photos at each (0.1 km apart): positives are (0,1) and (2,3).
    lat = torch.tensor([10.0, 10.001, -30.0, -30.001], dtype=torch.float64)
    lon = torch.tensor([20.0, 20.0, 100.0, 100.0], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    good = torch.stack([eye[0], eye[0], eye[1], eye[1]])  # positives identical, negatives orthogonal
    bad = torch.stack([eye[0], eye[1], eye[0], eye[1]])  # positives orthogonal, negatives identical
    tau = 0.5
    lg = float(geo_contrastive_loss(good, lat, lon, radius_km=25, temperature=tau))
    lb = float(geo_contrastive_loss(bad, lat, lon, radius_km=25, temperature=tau))
    assert lg < lb
    # Independently: anchor sees its positive at similarity 1 and two negatives at 0.
    assert lg == pytest.approx(math.log(1 + 2 * math.exp(-1 / tau)), rel=1e-6)
    assert lb == pytest.approx(-math.log(1 / (2 + math.exp(1 / tau))), rel=1e-6)
    # Same-cell positives: with a cell id shared by all, anchors gain positives and the loss changes.
    lc = float(geo_contrastive_loss(good, lat, lon, radius_km=25, temperature=tau, cell=torch.zeros(4, dtype=torch.long)))
    assert lc > lg


def test_uniformity_extremes_and_sharpen_and_interpolation():
    e = torch.eye(6, dtype=torch.float64)
    assert float(uniformity_loss(e, t=2.0)) == pytest.approx(-4.0)  # all pairs at squared distance 2
    same = torch.ones(5, 3, dtype=torch.float64) / math.sqrt(3)
    assert float(uniformity_loss(same)) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(sharpen_values(np.array([0.7, 0.6, 0.5]), 2.0), [0.9, 0.7, 0.5])
    np.testing.assert_allclose(sharpen_values(np.array([0.9, 0.6, 0.5]), 3.0), [1.0, 0.8, 0.5])
    rng = np.random.default_rng(0)
    xp = np.sort(rng.uniform(0, 100, 7))
    fp = rng.normal(size=7)
    x = rng.uniform(-10, 110, 50)
    np.testing.assert_allclose(interp1d(torch.tensor(x), torch.tensor(xp), torch.tensor(fp)).numpy(), np.interp(x, xp, fp), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------------
def test_sampler_puts_m_images_of_one_cell_in_each_group_and_is_deterministic():
    rng = np.random.default_rng(1)
    # 5 cells (2° grid) of different sizes.
    sizes = [40, 20, 10, 6, 4]
    lat = np.concatenate([np.full(s, 10.5 + 4 * c) + rng.uniform(-0.4, 0.4, s) for c, s in enumerate(sizes)])
    lon = np.concatenate([np.full(s, 20.5) + rng.uniform(-0.4, 0.4, s) for s in sizes])
    cell_of_row = np.repeat(np.arange(5), sizes)
    s = CellGroupBatchSampler(lat, lon, batch_size=14, group_size=4, cell_deg=2.0, batches_per_epoch=30, seed=7)
    batches = list(s)
    assert len(batches) == 30
    for b in batches:
        assert len(b) == 14 and len(set(b)) == 14
        groups = [b[g * 4 : (g + 1) * 4] for g in range(3)]
        cells = [set(cell_of_row[g]) for g in groups]
        assert all(len(c) == 1 for c in cells)  # each group: 4 images of one cell
        assert len(set.union(*cells)) == 3  # three different cells
    assert batches == list(CellGroupBatchSampler(lat, lon, 14, 4, 2.0, 30, seed=7))
    s.set_epoch(1)
    assert list(s) != batches


def test_sampler_draws_cells_with_probability_proportional_to_sqrt_size():
    lat = np.concatenate([np.full(100, 0.5), np.full(25, 10.5)])
    lon = np.full(125, 0.5)
    s = CellGroupBatchSampler(lat, lon, batch_size=4, group_size=4, batches_per_epoch=4000, seed=0)
    big = np.mean([b[0] < 100 for b in s])
    assert big == pytest.approx(10 / (10 + 5), abs=0.03)  # sqrt(100) : sqrt(25)


# ----------------------------------------------------------------------------------------------
# training runs with the tiny CLIP
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geo_images(tmp_path_factory) -> tuple[Path, Path]:
    """96 PNGs (40 px) in 4 clusters of 24 (continents apart, ~0.3° spread): colour from the
    location plus pixel noise. Returns ``(root, csv)``."""
    root = tmp_path_factory.mktemp("geo_images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(96):
        c = i % 4
        la, lo = CENTRES[c][0] + rng.normal(0, 0.3), CENTRES[c][1] + rng.normal(0, 0.3)
        colour = np.array([(la + 90) / 180, (lo + 180) / 360, (0.3 * c) % 1]) * 255
        arr = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"i{i:03d}.png")
        rows.append({"path": f"i{i:03d}.png", "lat": la, "lon": lo})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root, root / "metadata.csv"


def _cfg(tmp_path, geo_images, clip_dir, **kw) -> TrainConfig:
    root, csv = geo_images
    base = dict(
        out=str(tmp_path / "run"), root=str(root), csv=str(csv), model=str(clip_dir), train="all", steps=12,
        batch_size=16, group_size=4, lr=2e-3, warmup_steps=0, eval_every=0, device="cpu", num_workers=0,
        cache_images=True, val_fraction=0.2, val_gallery=64, progress=False, w_distill=0.0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _part_losses(run_dir: Path, part: str) -> list[float]:
    recs = [json.loads(line) for line in open(run_dir / "train_log.jsonl")]
    return [r["parts"][part] for r in recs if r["type"] == "step"]


@pytest.mark.parametrize(
    "objective,part,extra",
    [
        ("geo-contrastive", "contrastive", {}),
        ("distance-consistency", "consistency", {"sharpen": 3.0}),
        ("distance-consistency", "uniformity", {"w_consistency": 0.0, "w_uniformity": 1.0}),
    ],
)
def test_each_objective_decreases_during_training(tmp_path, geo_images, tiny_clip_dir, objective, part, extra):
    res = train(_cfg(tmp_path, geo_images, tiny_clip_dir, objective=objective, **extra))
    losses = _part_losses(res.out, part)
    assert len(losses) == 12
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - 0.1 * abs(first), (objective, losses)


def _pixels(geo_images, enc, n=8) -> np.ndarray:
    from geosolver.images import open_image

    root, _ = geo_images
    return np.stack([enc.preprocessor(open_image(root / f"i{i:03d}.png")) for i in range(n)])


def test_saved_weights_reload_identically_through_transformers_and_load_encoder(tmp_path, geo_images, tiny_clip_dir):
    from transformers import CLIPModel

    from geosolver.encoders import load_encoder

    res = train(_cfg(tmp_path, geo_images, tiny_clip_dir, objective="both", train="last-blocks", blocks=1, val_fraction=0.0, steps=6))
    assert res.best_step == 6  # no validation: the final weights are kept
    px = _pixels(geo_images, res.encoder)
    trained = res.encoder.embed_pixels(px)
    base = load_encoder(tiny_clip_dir, device="cpu", precision="fp32").embed_pixels(px)
    assert np.abs(trained - base).max() > 1e-3  # training changed the embeddings
    m = CLIPModel.from_pretrained(res.model_dir).eval()
    with torch.no_grad():
        out = m.get_image_features(pixel_values=torch.from_numpy(px))
    out = getattr(out, "pooler_output", out)
    plain = torch.nn.functional.normalize(out, dim=-1).numpy()
    np.testing.assert_allclose(plain, trained, atol=1e-5)
    np.testing.assert_allclose(load_encoder(res.model_dir, device="cpu", precision="fp32").embed_pixels(px), trained, atol=1e-5)
    # Only the last vision block, the post-layernorm and the projection were trained.
    b0 = CLIPModel.from_pretrained(tiny_clip_dir)
    sd0, sd1 = b0.state_dict(), m.state_dict()
    changed = {k for k in sd0 if not torch.equal(sd0[k], sd1[k])}
    assert changed and all(k.startswith(("vision_model.encoder.layers.1.", "vision_model.post_layernorm", "visual_projection")) for k in changed)
    cfg = json.loads((res.out / "config.json").read_text())
    assert cfg["train"] == "last-blocks" and cfg["weights"]["contrastive"] == 1.0 and cfg["result"]["steps_done"] == 6


def test_trunk_cache_trains_exactly_like_the_full_forward(tmp_path, geo_images, tiny_clip_dir):
    kw = dict(objective="both", train="last-blocks", blocks=1, steps=5, w_distill=0.5, eval_every=0)
    full = train(_cfg(tmp_path / "full", geo_images, tiny_clip_dir, **kw))
    fast = train(_cfg(tmp_path / "fast", geo_images, tiny_clip_dir, cache_trunk=True, cache_images=False, **kw))
    lf = [json.loads(line) for line in open(full.out / "train_log.jsonl")]
    lc = [json.loads(line) for line in open(fast.out / "train_log.jsonl")]
    assert [r["type"] for r in lf] == [r["type"] for r in lc]
    for a, b in zip(lf, lc):
        if a["type"] == "step":
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        else:
            assert b["geoscore"] == pytest.approx(a["geoscore"], rel=1e-6) and b["spearman"] == pytest.approx(a["spearman"], abs=1e-4)
    px = _pixels(geo_images, full.encoder)
    np.testing.assert_allclose(fast.encoder.embed_pixels(px), full.encoder.embed_pixels(px), atol=1e-4)


def test_gradient_checkpointing_recomputes_layers_and_changes_no_result(tmp_path, geo_images, tiny_clip_dir):
    from geosolver.encoders import load_encoder

    def run(name, ckpt):
        enc = load_encoder(tiny_clip_dir, device="cpu", precision="fp32")
        calls = []
        mlp = enc.model.vision_model.encoder.layers[0].mlp
        orig = mlp.forward  # count calls of the inner forward (module hooks do not fire on recompute)
        mlp.forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
        cfg = _cfg(tmp_path / name, geo_images, tiny_clip_dir, objective="geo-contrastive", steps=3, val_fraction=0.0, gradient_checkpointing=ckpt)
        res = train(cfg, encoder=enc)
        return [json.loads(line)["loss"] for line in open(res.out / "train_log.jsonl")], len(calls)

    la, calls_a = run("a", False)
    lb, calls_b = run("b", True)
    assert calls_a == 3 and calls_b == 6  # checkpointing re-runs each layer's forward in backward
    assert lb == pytest.approx(la, rel=1e-5)


def test_lora_merged_on_save_reproduces_the_adapted_model(tmp_path, geo_images, tiny_clip_dir):
    from transformers import CLIPModel

    from geosolver.encoders import load_encoder
    from geosolver.train.params import add_lora, merge_lora

    enc = load_encoder(tiny_clip_dir, device="cpu", precision="fp32")
    px = _pixels(geo_images, enc)
    base = enc.embed_pixels(px)
    peft_model = add_lora(enc.model, r=4, alpha=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in enc.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # lora_B starts at 0 (identity); make the adapters matter
    adapted = enc.embed_pixels(px)
    assert np.abs(adapted - base).max() > 1e-2
    enc.model = merge_lora(peft_model)
    assert not any("lora" in k for k in enc.model.state_dict())
    enc.save(tmp_path / "merged")
    m = CLIPModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        out = m.get_image_features(pixel_values=torch.from_numpy(px))
    np.testing.assert_allclose(torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy(), adapted, atol=1e-5)


def test_cli_lora_run_writes_every_output(tmp_path, geo_images, tiny_clip_dir, capsys):
    from transformers import CLIPModel

    from geosolver.cli import main as cli_main

    root, csv = geo_images
    out = tmp_path / "lora_run"
    rc = cli_main([
        "train", "--root", str(root), "--csv", str(csv), "--model", str(tiny_clip_dir), "--objective", "both",
        "--train", "lora", "--lora-r", "4", "--steps", "4", "--batch-size", "16", "--eval-every", "2", "--lr", "1e-2",
        "--val-gallery", "48", "--device", "cpu", "--num-workers", "0", "--out", str(out), "--no-progress", "--sharpen", "1.5",
    ])
    assert rc == 0
    for f in ("config.json", "train_log.jsonl", "target_curve.json", "training.png", "model/config.json"):
        assert (out / f).is_file(), f
    recs = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert [r["step"] for r in recs if r["type"] == "eval"] == [0, 2, 4]
    assert all({"geoscore", "spearman", "mean_cosine", "effective_rank"} <= r.keys() for r in recs if r["type"] == "eval")
    curve = json.loads((out / "target_curve.json").read_text())
    assert curve["sharpen"] == 1.5 and np.all(np.diff(curve["sim"]) <= 1e-12)
    far = curve["sim_before_sharpen"][-1]
    np.testing.assert_allclose(curve["sim"], np.minimum(far + (np.array(curve["sim_before_sharpen"]) - far) * 1.5, 1.0))
    m = CLIPModel.from_pretrained(out / "model")
    assert not any("lora" in k for k in m.state_dict())
    assert "kept step" in capsys.readouterr().out


def test_collapse_stops_training_with_a_clear_message(tmp_path, geo_images, tiny_clip_dir):
    # A target of similarity 1 at every distance pulls everything together.
    curve = tmp_path / "ones.json"
    curve.write_text(json.dumps({"knots_km": [0.0, 20000.0], "sim": [1.0, 1.0]}))
    cfg = _cfg(tmp_path, geo_images, tiny_clip_dir, objective="distance-consistency", target_curve=str(curve), lr=2e-2, steps=60, eval_every=3)
    with pytest.raises(CollapseError, match="collapsed") as ei:
        train(cfg)
    assert "step" in str(ei.value) and "learning rate" in str(ei.value)
    recs = [json.loads(line) for line in open(Path(cfg.out) / "train_log.jsonl")]
    evals = [r for r in recs if r["type"] == "eval"]
    assert evals[-1]["collapsed"] and evals[-1]["step"] < 60
    assert (Path(cfg.out) / "model" / "config.json").is_file()  # the best weights before collapse are kept
    res = ei.value.result  # ... and the error carries the run's result, for callers that go on (benchmarks)
    assert res.model_dir == Path(cfg.out) / "model" and res.best_step < res.steps == evals[-1]["step"]


def test_the_best_validation_step_is_saved_not_the_last(tmp_path, geo_images, tiny_clip_dir, monkeypatch):
    # Script the validation Geoscore so that step 2 of 4 is the best, and record the weights each
    # validation saw: OUT/model must hold step 2's weights, not the final ones.
    from transformers import CLIPModel

    from geosolver.encoders import load_encoder
    from geosolver.train.validate import ValidationSet

    enc = load_encoder(tiny_clip_dir, device="cpu", precision="fp32")
    scripted = iter([10.0, 20.0, 40.0, 30.0, 25.0])  # steps 0, 1, 2, 3, 4
    seen: dict[int, dict[str, torch.Tensor]] = {}
    real_metrics = ValidationSet.metrics

    def metrics(self, *args, **kwargs):
        m = real_metrics(self, *args, **kwargs)
        seen[len(seen)] = {k: v.detach().clone() for k, v in enc.model.state_dict().items()}
        m["geoscore"] = next(scripted)
        return m

    monkeypatch.setattr(ValidationSet, "metrics", metrics)
    res = train(_cfg(tmp_path, geo_images, tiny_clip_dir, objective="geo-contrastive", steps=4, eval_every=1), encoder=enc)
    assert sorted(seen) == [0, 1, 2, 3, 4] and res.steps == 4 and res.best_step == 2
    assert json.loads((res.out / "config.json").read_text())["result"]["best_step"] == 2
    saved = CLIPModel.from_pretrained(res.model_dir).state_dict()
    vision = [k for k in saved if k.startswith(("vision_model.", "visual_projection"))]
    assert any(not torch.equal(seen[2][k], seen[4][k]) for k in vision)  # training moved the weights after step 2
    for k in vision:
        torch.testing.assert_close(saved[k], seen[2][k], rtol=0, atol=0)


def test_missing_train_extra_fails_with_one_line_naming_it(tmp_path, geo_images, tiny_clip_dir, monkeypatch, capsys):
    from transformers import CLIPModel

    from geosolver.cli import main as cli_main
    from geosolver.errors import TrainError
    from geosolver.train.params import add_lora

    root, csv = geo_images
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` raises ImportError
    rc = cli_main(["train", "--root", str(root), "--csv", str(csv), "--model", str(tiny_clip_dir), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "pip install 'geosolver[train]'" in err and "accelerate" in err
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(TrainError, match=r"peft.*pip install 'geosolver\[train\]'"):
        add_lora(CLIPModel.from_pretrained(tiny_clip_dir))


#: What `geosolver train` runs with when an option is not given, written out by hand (README's CLI
#: reference): a default changed in TrainConfig, or lost or retyped by the parser, fails here.
EXPECTED_DEFAULTS = dict(
    dataset="folder", split=None, csv=None, limit=None, model="streetclip", objective="distance-consistency",
    w_contrastive=None, w_consistency=None, w_rnc=None, w_soft=None, w_uniformity=0.0, w_distill=0.1,
    radius_km=25.0, temperature=0.07, soft_scale_km=500.0, sharpen=1.0, curve_sample=2000,
    balance_edges_km=[0.0, 1.0, 5.0, 25.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20100.0],
    train="last-blocks", blocks=2, lora_r=8, steps=500, batch_size=64, group_size=4, cell_deg=2.0, lr=None,
    weight_decay=0.01, warmup_steps=20, grad_clip=1.0, eval_every=100, val_fraction=0.1, val_queries=500,
    val_gallery=2000, k=10, strategy="densest", collapse_rank_frac=0.5, collapse_max_cosine=0.95,
    gradient_checkpointing=False, cache_images=False, cache_trunk=False, flip=True, num_workers=None,
    device="auto", precision="auto", seed=0, progress=True, save_every=100, overwrite=False,
)
#: One value other than the default for every option (each must come through the parser as given).
NON_DEFAULTS = dict(
    root="data/x", dataset="osv5m", split="train", csv="m.csv", limit=7, model="clip-vit-b-32", objective="both",
    w_contrastive=0.5, w_consistency=0.25, w_rnc=0.125, w_soft=2.0, w_uniformity=0.3, w_distill=0.0, radius_km=12.5,
    positive_cell_deg=1.5, temperature=0.2, soft_scale_km=250.0, sharpen=1.5, target_curve="c.json",
    consistency_max_km=1500.0, curve_sample=300, balance_edges_km=[0.0, 10.0, 20100.0], train="lora", blocks=3,
    lora_r=4, lora_alpha=8.0, lora_dropout=0.1, steps=77, batch_size=32, group_size=2, cell_deg=5.0, lr=3e-4,
    weight_decay=0.05, warmup_steps=5, grad_clip=0.5, eval_every=11, val_fraction=0.3, val_queries=99,
    val_gallery=333, k=5, strategy="nn", collapse_rank_frac=0.25, collapse_max_cosine=0.9,
    gradient_checkpointing=True, cache_images=True, cache_trunk=True, flip=False, num_workers=3, device="cpu",
    precision="bf16", seed=9, progress=False, save_every=25, overwrite=True,
)


def _tokens(name: str, value) -> list[str]:
    """How a user types ``value`` for field ``name``."""
    opt = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [opt] if value else ["--no-" + name.replace("_", "-")]
    if isinstance(value, list):
        return [opt, *map(str, value)]
    return [opt, str(value)]


def test_cli_options_are_derived_from_train_config_and_keep_their_spellings(capsys):
    from dataclasses import asdict, fields

    from geosolver.cli import build_parser
    from geosolver.cli.train_cmd import train_config

    def parse(*argv):
        return train_config(build_parser().parse_args(["train", "--data", "r", "--out", "o", *argv]))

    default = asdict(parse())
    assert {k: default[k] for k in EXPECTED_DEFAULTS} == EXPECTED_DEFAULTS
    assert asdict(TrainConfig(out="o", root="r")) == default  # the Python API runs with the same defaults
    names = [f.name for f in fields(TrainConfig)]
    assert set(NON_DEFAULTS) == set(names) - {"out"}  # a new option gets a value here
    argv = [t for n, v in NON_DEFAULTS.items() if n != "root" for t in _tokens(n, v)]
    given = asdict(parse(*argv, "--data", NON_DEFAULTS["root"], "--out", "elsewhere"))
    assert all(given[n] != default[n] for n in NON_DEFAULTS)
    assert {n: given[n] for n in NON_DEFAULTS} == NON_DEFAULTS and given["out"] == "elsewhere"
    cfg = parse("--train", "last-blocks", "3", "--no-flip", "--no-progress", "--cache-trunk", "--w-contrastive", "0.5",
                "--lora-r", "4", "--positive-cell-deg", "2", "--balance-edges-km", "0", "10", "20100", "--strategy", "nn")
    assert (cfg.train, cfg.blocks, cfg.flip, cfg.progress, cfg.cache_trunk, cfg.w_contrastive, cfg.lora_r) == ("last-blocks", 3, False, False, True, 0.5, 4)
    assert cfg.positive_cell_deg == 2.0 and cfg.balance_edges_km == [0.0, 10.0, 20100.0] and cfg.strategy == "nn"
    assert (parse("--train", "lora").train, parse("--train", "lora").blocks) == ("lora", 2)
    for bad in (["--train", "lora", "3"], ["--train", "bogus"], ["--train", "last-blocks", "x"], ["--objective", "nope"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # line breaks (even at hyphens) do not matter
    assert all("".join(f.metadata["help"].split()) in text for f in fields(TrainConfig))  # help text lives on the field


# ----------------------------------------------------------------------------------------------
# hostile numbers: one line naming the option as typed, exit 2, before anything is loaded
# ----------------------------------------------------------------------------------------------
BAD_TRAIN_NUMBERS = [
    ("--lr", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "inf"), ("--steps", "0"), ("--steps", "-5"),
    ("--batch-size", "0"), ("--batch-size", "-8"), ("--group-size", "0"), ("--w-distill", "-1"), ("--w-distill", "nan"),
    ("--w-contrastive", "-0.5"), ("--w-consistency", "inf"), ("--w-uniformity", "nan"), ("--temperature", "0"),
    ("--temperature", "-0.07"), ("--radius-km", "nan"), ("--sharpen", "0"), ("--cell-deg", "-2"), ("--positive-cell-deg", "0"),
    ("--weight-decay", "-0.1"), ("--warmup-steps", "-1"), ("--grad-clip", "nan"), ("--eval-every", "-1"),
    ("--val-fraction", "1.5"), ("--val-fraction", "nan"), ("--val-queries", "0"), ("--val-gallery", "1"), ("--k", "0"),
    ("--collapse-rank-frac", "nan"), ("--collapse-max-cosine", "2"), ("--lora-r", "0"), ("--lora-alpha", "nan"),
    ("--lora-dropout", "1"), ("--blocks", "0"), ("--limit", "0"), ("--curve-sample", "1"), ("--num-workers", "-1"),
    ("--seed", "-1"), ("--balance-edges-km", "0 nan"), ("--balance-edges-km", "10 5"), ("--save-every", "-1"),
]


@pytest.mark.parametrize("opt,value", BAD_TRAIN_NUMBERS, ids=[f"{o} {v}" for o, v in BAD_TRAIN_NUMBERS])
def test_bad_training_numbers_are_one_line_naming_the_option(opt, value, tmp_path, geo_images, tiny_clip_dir, capsys):
    from geosolver.cli import main as cli_main

    root, csv = geo_images
    out = tmp_path / "run"
    rc = cli_main(["train", "--root", str(root), "--csv", str(csv), "--model", str(tiny_clip_dir), "--out", str(out),
                   "--no-progress", "--device", "cpu", "--steps", "2", "--batch-size", "8", "--val-fraction", "0",
                   "--num-workers", "0", "--w-distill", "0", opt, *value.split()])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("geosolver train: error:") and opt in err, err
    assert not (out / "model").exists()


def test_train_config_validates_in_python_too():
    from geosolver.errors import TrainError

    with pytest.raises(TrainError, match=r"--lr must be a finite number > 0"):
        TrainConfig(out="o", root="r", lr=float("nan"))
    with pytest.raises(TrainError, match=r"--w-distill"):
        TrainConfig(out="o", root="r", w_distill=-1)
    with pytest.raises(TrainError, match=r"--steps"):
        TrainConfig(out="o", root="r", steps="many")
    TrainConfig(out="o", root="r", lr=1e-4, w_contrastive=0, positive_cell_deg=None, limit=None)  # valid


def test_histogram_model_advice_is_true(tmp_path, geo_images, capsys):
    """`--model histogram` has no weights: the message must not advise `--train all`, which fails the same way."""
    from geosolver.cli import main as cli_main

    root, csv = geo_images
    for mode in ("last-blocks", "all", "projection"):
        rc = cli_main(["train", "--root", str(root), "--csv", str(csv), "--model", "histogram", "--out", str(tmp_path / mode),
                       "--train", mode, "--no-progress", "--device", "cpu", "--steps", "2", "--batch-size", "8",
                       "--val-fraction", "0", "--num-workers", "0", "--curve-sample", "16"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, err
        assert "no trainable weights" in err and "use --train all" not in err, err
        assert "efficientnet-lite0" in err and "streetclip" in err, err  # what can be fine-tuned instead


def _synthetic_log(path: Path, weights: dict) -> list[dict]:
    """A train_log.jsonl whose raw distill term (0.4-0.5) is far above the total it enters weighted."""
    recs = []
    for s in range(1, 6):
        parts = {"consistency": 0.05 / s, "distill": 0.5 - 0.02 * s}
        total = sum(weights[k] * v for k, v in parts.items())
        recs.append({"type": "step", "step": s, "loss": total, "parts": parts, "lr": 1e-3})
    recs.append({"type": "eval", "step": 5, "spearman": 0.5, "mean_cosine": 0.3, "effective_rank": 4.0, "geoscore": 1000.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def test_training_plot_shows_each_term_as_it_enters_the_total(tmp_path):
    from geosolver.train.plots import loss_series, plot_training, read_train_log

    weights = {"contrastive": 0.0, "consistency": 1.0, "uniformity": 0.0, "distill": 0.1}
    recs = _synthetic_log(tmp_path / "train_log.jsonl", weights)
    steps, _ = read_train_log(tmp_path / "train_log.jsonl")
    series = loss_series(steps, weights)
    assert list(series)[0] == "total" and series["total"] == pytest.approx([r["loss"] for r in recs[:5]])
    distill = series["0.1 × distill"]  # labelled with its weight
    assert all(d <= t for d, t in zip(distill, series["total"]))
    assert distill == pytest.approx([0.1 * r["parts"]["distill"] for r in recs[:5]])
    assert max(r["parts"]["distill"] for r in recs[:5]) > max(series["total"])  # unweighted, it would sit above
    weighted = [v for k, v in series.items() if k != "total"]
    assert [sum(x) for x in zip(*weighted)] == pytest.approx(series["total"])  # the terms add up to the total
    # the run's weights come from config.json next to the log when not given
    (tmp_path / "config.json").write_text(json.dumps({"weights": weights}))
    plot_training(tmp_path / "train_log.jsonl", tmp_path / "training.png")
    assert (tmp_path / "training.png").stat().st_size > 0
    assert list(loss_series(steps, None)) == ["total", "consistency (unweighted)", "distill (unweighted)"]
