"""The table-building half of benchmarks/finetune.py on synthetic run JSONs (no training).

Δs and CI-clear counts are hand-computed: per-query differences that are constant within a
replicate have a degenerate bootstrap (every resample has the same mean), so their interval is
exactly that constant.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("finetune_bench", ROOT / "benchmarks" / "finetune.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["finetune_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


N = 40  # queries per replicate
IDS = [f"q{i:03d}" for i in range(N)]


def _run(bench, arm: str, rep: int, nn: np.ndarray, dn: np.ndarray, model="m@64", split="random", **extra) -> dict:
    km = np.where(nn > 2000, 10.0, 3000.0)  # two bands: 0–25 or >2500
    return {
        "model": model, "split": split, "replicate": rep, "arm": arm, "status": "ok", "ids": IDS,
        "per_query": {"nn@1": {"geoscore": nn.tolist(), "km": km.tolist()}, "densest@10": {"geoscore": dn.tolist(), "km": km.tolist()}},
        "summary": {"nn@1": {"geoscore": float(nn.mean())}, "densest@10": {"geoscore": float(dn.mean())}},
        "error_bands": {"nn@1": bench.error_bands(km), "densest@10": bench.error_bands(km)},
        "spearman": extra.get("spearman", -0.05), "mean_cos": 0.4, "eff_rank": extra.get("eff_rank", 100.0),
        "false_friend_rate": 0.1,
        "curve": {"mean_km": [10.0, 100.0, 1000.0], "mean_sim": [0.6, 0.5, None], "count": [3, 4, 0]},
    }


def _write(out: Path, bench, rec: dict) -> None:
    p = bench.run_path(out, rec["model"], rec["split"], rec["replicate"], rec["arm"])
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(rec))


def _base(rep: int) -> np.ndarray:
    return np.random.default_rng(rep).uniform(500, 3000, N)


def test_pooled_bootstrap_hand_computed(bench):
    # replicate 0: every query +10 → CI [10, 10], clear above; replicate 1: ±1 alternating, mean 0,
    # CI straddles 0; replicate 2: every query −4 → CI [−4, −4], clear below.
    alt = np.tile([1.0, -1.0], N // 2)
    r = bench.pooled_bootstrap([np.full(N, 10.0), alt, np.full(N, -4.0)], n_boot=4000, seed=0)
    assert r["mean"] == pytest.approx((10 + 0 - 4) / 3)
    assert r["per_rep"][0] == pytest.approx((10, 10, 10)) and r["per_rep"][2] == pytest.approx((-4, -4, -4))
    assert r["per_rep"][1][1] < 0 < r["per_rep"][1][2]
    assert (r["above"], r["below"], r["n"]) == (1, 1, 3)
    # pooled = (10 + m1 − 4)/3 with m1 the resampled mean of ±1 (|m1| ≤ 1): interval inside [5/3, 7/3], around 2
    assert 5 / 3 <= r["lo"] < 2 < r["hi"] <= 7 / 3
    # the pooled interval is narrower than replicate 1's own: averaging over 3 replicates divides its spread by 3
    assert (r["hi"] - r["lo"]) == pytest.approx((r["per_rep"][1][2] - r["per_rep"][1][1]) / 3, rel=1e-9)
    # a positive mean is not enough: +10.5 / −9.5 alternating has mean +0.5 but a CI of about ±3 around it
    noisy = bench.pooled_bootstrap([np.tile([10.5, -9.5], N // 2)], n_boot=4000, seed=0)
    assert noisy["mean"] == pytest.approx(0.5) and noisy["lo"] < 0 < noisy["hi"]
    assert (noisy["above"], noisy["below"]) == (0, 0)


def test_pooled_bootstrap_is_deterministic_and_tracks_noise(bench):
    rng = np.random.default_rng(5)
    d = [rng.normal(3, 20, 200), rng.normal(3, 20, 200)]
    a, b = bench.pooled_bootstrap(d, 1000, 0), bench.pooled_bootstrap(d, 1000, 0)
    assert a == b
    assert a["lo"] < a["mean"] < a["hi"]
    assert a["mean"] == pytest.approx(np.mean([x.mean() for x in d]))


def test_tables_from_synthetic_jsons(bench, tmp_path):
    # two replicates; arm "up" is +30 everywhere at 1-NN (+30 at densest in r0, +0 in r1);
    # arm "down" is −8 at both settings in r0 and mixed ±5 in r1; "gone" was skipped.
    out = tmp_path / "res"
    alt = np.tile([5.0, -5.0], N // 2)
    for rep in (0, 1):
        b = _base(rep)
        _write(out, bench, _run(bench, "base", rep, b, b + 1, spearman=-0.04, eff_rank=90.0))
        _write(out, bench, _run(bench, "up", rep, b + 30, b + 1 + (30 if rep == 0 else 0), spearman=-0.10, eff_rank=95.0))
        _write(out, bench, _run(bench, "down", rep, b + (-8 if rep == 0 else alt), b + 1 + (-8 if rep == 0 else alt)))
        _write(out, bench, {"model": "m@64", "split": "random", "replicate": rep, "arm": "gone", "status": "skipped",
                            "reason": "objective 'gone' is not one of TrainConfig's"})
    s = bench.summarise(bench.load_runs(out), n_boot=500)
    g = s[("m@64", "random")]
    up, down = g["arms"]["up"], g["arms"]["down"]
    assert up["delta"]["nn@1"]["mean"] == pytest.approx(30) and (up["delta"]["nn@1"]["lo"], up["delta"]["nn@1"]["hi"]) == pytest.approx((30, 30))
    assert (up["delta"]["nn@1"]["above"], up["delta"]["nn@1"]["below"]) == (2, 0)
    assert up["delta"]["densest@10"]["mean"] == pytest.approx(15) and (up["delta"]["densest@10"]["lo"], up["delta"]["densest@10"]["hi"]) == pytest.approx((15, 15))
    assert (up["delta"]["densest@10"]["above"], up["delta"]["densest@10"]["below"]) == (1, 0)
    assert up["spread"]["densest@10"] == pytest.approx((0, 30))
    assert down["delta"]["nn@1"]["mean"] == pytest.approx(-4)
    assert (down["delta"]["nn@1"]["above"], down["delta"]["nn@1"]["below"]) == (0, 1)
    assert -4 - 2.5 <= down["delta"]["nn@1"]["lo"] < -4 < down["delta"]["nn@1"]["hi"] <= -4 + 2.5
    assert g["winner"] == "up" and g["skipped"] == {"gone": "objective 'gone' is not one of TrainConfig's"}
    assert up["arm"]["spearman"] == pytest.approx(-0.10) and up["base"]["eff_rank"] == pytest.approx(90.0)
    # error bands summed over replicates: every query with Geoscore > 2000 was put at 10 km
    nb = sum(int((_base(r) > 2000).sum()) for r in (0, 1))
    assert up["base"]["bands"]["nn@1"] == [nb, 0, 0, 0, 2 * N - nb]

    text = bench.write_tables(out, n_boot=500)
    assert (out / "tables.md").read_text() == text
    assert "| m@64 | random | up (winner) | 2 | **+30 [+30, +30]** | 2↑ 0↓ /2 |" in text
    assert "gone** skipped: objective 'gone'" in text
    assert "winning arm **up**" in text and (out / "mechanism_m-64_random.png").stat().st_size > 1000
    # --table-only gives the same tables from the JSONs alone
    bench.main(["--table-only", str(out), "--bootstrap", "500"])
    assert (out / "tables.md").read_text() == text


def test_unpaired_queries_are_refused(bench, tmp_path):
    b = _base(0)
    base, arm = _run(bench, "base", 0, b, b), _run(bench, "up", 0, b, b)
    arm["ids"] = IDS[::-1]
    with pytest.raises(ValueError, match="different queries"):
        bench.paired_diffs(arm, base, "nn@1")


def test_arms_and_error_bands(bench):
    assert bench.error_bands([0, 24.9, 25, 199, 200, 749, 750, 2499, 2500, 1e4]) == [2, 2, 2, 2, 2]
    assert bench.parse_arms("dc-plain,geo-contrastive") == ["dc-plain", "contrastive"]
    assert bench.parse_arms("distance-consistency") == ["dc-plain", "dc-sharp2", "dc-falling"]
    with pytest.raises(SystemExit):
        bench.parse_arms("no-such-objective")
    assert bench.arm_unavailable({"objective": "geo-contrastive"}) is None
    assert "no field" in bench.arm_unavailable({"objective": "geo-contrastive", "no_such_field": 1.0})
    assert "not one of" in bench.arm_unavailable({"objective": "no-such-objective"})
