"""A whole miniature `geosolver study` against the local hub stand-in: download, study, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geosolver.cli import main as cli_main
from geosolver.data import osv5m
from geosolver.study import ARMS, STUDY_COLUMNS, StudyConfig, estimate
from geosolver.study_check import EncoderCheck
from hubstub import BASELINE_ID, STREETCLIP_ID, point_client_at, start_default_hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    stub = start_default_hub(tmp_path_factory.mktemp("hubstub"))
    yield stub
    stub.stop()


def test_miniature_study_end_to_end_then_resume_skips_every_step(hub, tmp_path, monkeypatch, capsys):
    hf_home = tmp_path / "hf_home"
    point_client_at(monkeypatch, hub.endpoint, hf_home)
    root, out = tmp_path / "osv5m", tmp_path / "study"
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--no-progress"]) == 0
    args = ["study", "--root", str(root), "--out", str(out), "--test-limit", "24", "--train-limit", "48",
            "--gallery-sizes", "16,32", "--steps", "3", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    hub.reset_log()
    reads = []  # each split's CSV is read once per study, only the study's columns (train gets the table)
    read_csv = osv5m.read_osv5m_csv
    monkeypatch.setattr(osv5m, "read_osv5m_csv", lambda path, columns=None: reads.append((Path(path).name, columns)) or read_csv(path, columns))
    assert cli_main(args) == 0
    assert sorted(reads, key=lambda r: r[0]) == [("test.csv", STUDY_COLUMNS), ("train.csv", STUDY_COLUMNS)]
    printed = capsys.readouterr().out
    assert "estimate (cpu; ASSUMED per-image rates" in printed and "These are estimates" in printed
    # models not in the cache yet: 2 encoders + 3 fine-tuned ones, each embedding 24 test + 48 train images;
    # 3 arms x 3 steps x 64 images trained
    assert "): 360 images still to embed + 576 to train" in printed
    # the default encoders resolved through the hub (into the temporary HF cache)
    assert any("/geolocal/StreetCLIP/resolve/" in r[1] for r in hub.file_gets())
    assert any("/openai/clip-vit-large-patch14-336/resolve/" in r[1] for r in hub.file_gets())

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"].values()) == {"ran"}
    runs = summary["runs"]
    expected = {"streetclip-full", "clip-vit-l-14-336-full", "ft-soft-contrastive-full", "ft-dc-sharp2-full", "ft-dc-plain-full",
                "streetclip-text", *(f"streetclip-{s}-{n}" for s in ("grouped-clustered", "random") for n in (16, 32))}
    assert expected == set(runs)
    # kNN vs zero-shot vs text prior: the three kinds of rows of one run, from the stored embeddings
    text = json.loads((out / "runs" / "streetclip-text" / "metrics.json").read_text())
    kinds = {(r["strategy"], r["prior"]) for r in text["rows"]}
    assert ("zero-shot-countries", "none") in kinds and ("densest", "text") in kinds and ("densest", "none") in kinds
    assert all(r["k"] == 10 for r in text["rows"] if r["strategy"] != "zero-shot-countries" and r["strategy"] != "nn")
    for name, r in runs.items():
        assert 0 <= r["best"]["geoscore"] <= 5000, name
        assert r["references"]["oracle"]["geoscore"] >= r["best"]["geoscore"] - 1e-9, name
    assert summary["groups"]["n_images"] == 24 and summary["groups"]["by"] == ["cell", "land_cover", "climate", "soil"]
    assert set(summary["training"]) == {"soft-contrastive", "dc-sharp2", "dc-plain"}
    trained = {a: json.loads((out / "train" / a / "config.json").read_text()) for a in ARMS}
    assert {a: (c["objective"], c["sharpen"], c["train"]) for a, c in trained.items()} == {
        "soft-contrastive": ("soft-contrastive", 1.0, "last-blocks"), "dc-sharp2": ("distance-consistency", 2.0, "last-blocks"),
        "dc-plain": ("distance-consistency", 1.0, "last-blocks")}
    # the stores record the encoder as the hub knows it (id + commit), not a path into this machine's cache
    for label, repo in (("streetclip", STREETCLIP_ID), ("clip-vit-l-14-336", BASELINE_ID)):
        for split in ("test", "train"):
            enc = json.loads((out / "stores" / label / split / "manifest.json").read_text())["encoder"]
            assert (enc["name"], enc["revision"]) == (repo, hub.repos[("model", repo)].sha)
    assert not any(str(hf_home) in p.read_text() for p in out.glob("stores/*/*/manifest.json"))
    assert all(t["steps"] == 3 for t in summary["training"].values())
    assert summary["hardware"]["cpu_count"] >= 1 and summary["hardware"]["device_name"]
    assert any(c.startswith("geosolver train ") for c in sum(summary["commands"].values(), []))

    html = (out / "report.html").read_text()
    best = runs["streetclip-full"]["best"]
    assert f"{best['geoscore']:.0f}" in html and "Commands reproducing each step" in html
    assert "geosolver evaluate --queries" in html and "Hardware" in html and "zero-shot-countries" in html
    assert "--prior none,text" in html and html.count("data:image/png;base64,") >= 4
    assert (out / "report.md").exists() and (out / "config.json").exists()
    # location heads on the model's gallery embeddings: each head alone and fused with kNN, in the report
    heads = json.loads((out / "heads" / "streetclip" / "heads.json").read_text())
    methods = [r["method"] for r in heads["rows"]]
    assert {"head-cells", "head-flow"} <= set(methods) and sum("head prior" in m for m in methods) == 2
    assert all((out / "heads" / "streetclip" / f"head-{k}" / "head.json").is_file() for k in ("cells", "flow"))
    assert "4b. " in (out / "report.md").read_text() and "head-flow" in html
    assert any(c.startswith("geosolver head train ") for c in sum(summary["commands"].values(), []))

    # resumed: every step skipped, the hub not asked anything, the numbers unchanged
    hub.reset_log()
    assert cli_main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert set(again["steps"].values()) == {"skipped"}
    assert hub.requests == []
    assert again["runs"] == runs
    printed = capsys.readouterr().out
    assert "): 0 images still to embed + 0 to train" in printed  # everything is on disk already
    est = json.loads((out / "config.json").read_text())["estimate"]
    assert (est["images_embedded"], est["images_trained"], est["disk_bytes"]) == (0, 0, 0)


def test_the_estimate_uses_each_encoders_own_cost(tmp_path):
    cfg = StudyConfig(root=str(tmp_path), out=str(tmp_path / "out"), test_limit=1000, train_limit=1000, gallery_sizes=[500],
                      steps=10, device="cpu")
    big = {"model": EncoderCheck("streetclip", "cached", "ViT-L/14-336"), "baseline": EncoderCheck("b", "cached", "ViT-L/14-336")}
    small = {"model": EncoderCheck("clip-vit-b-32", "cached", "ViT-B/32"), "baseline": big["baseline"]}
    e_big, e_small = estimate(cfg, big, 1000), estimate(cfg, small, 1000)
    # the same work: 5 encoders x 2000 images, 3 arms x 10 steps x 64 images
    assert e_big["images_embedded"] == e_small["images_embedded"] == 10_000
    assert e_big["images_trained"] == e_small["images_trained"] == 1920
    assert e_small["seconds"] < 0.5 * e_big["seconds"]
    assert e_small["assumed"]["model"]["class"] == "ViT-B/32" and e_small["assumed"]["baseline"]["class"] == "ViT-L/14-336"
    # a model still to download adds its bytes to the disk estimate
    fetch = dict(big, model=EncoderCheck("streetclip", "hub", "ViT-L/14-336", 1.7e9))
    assert estimate(cfg, fetch, 1000)["disk_bytes"] == pytest.approx(e_big["disk_bytes"] + 1.7e9)
