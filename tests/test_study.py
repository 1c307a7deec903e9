"""A whole miniature `geosolver study` against the local hub stand-in: download, study, resume."""

from __future__ import annotations

import json

import pytest

from geosolver.cli import main as cli_main
from hubstub import point_client_at, start_default_hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    stub = start_default_hub(tmp_path_factory.mktemp("hubstub"))
    yield stub
    stub.stop()


def test_miniature_study_end_to_end_then_resume_skips_every_step(hub, tmp_path, monkeypatch, capsys):
    point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    root, out = tmp_path / "osv5m", tmp_path / "study"
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--no-progress"]) == 0
    args = ["study", "--root", str(root), "--out", str(out), "--test-limit", "24", "--train-limit", "48",
            "--gallery-sizes", "16,32", "--steps", "3", "--device", "cpu", "--num-workers", "0", "--no-progress"]
    hub.reset_log()
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "estimate (cpu, ASSUMED rates" in printed and "These are estimates" in printed
    # the default encoders resolved through the hub (into the temporary HF cache)
    assert any("/geolocal/StreetCLIP/resolve/" in r[1] for r in hub.file_gets())
    assert any("/openai/clip-vit-large-patch14-336/resolve/" in r[1] for r in hub.file_gets())

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["steps"].values()) == {"ran"}
    runs = summary["runs"]
    expected = {"streetclip-full", "clip-vit-l-14-336-full", "ft-distance-consistency-full", "ft-geo-contrastive-full",
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
    assert set(summary["training"]) == {"distance-consistency", "geo-contrastive"}
    assert all(t["steps"] == 3 for t in summary["training"].values())
    assert summary["hardware"]["cpu_count"] >= 1 and summary["hardware"]["device_name"]
    assert any(c.startswith("geosolver train ") for c in sum(summary["commands"].values(), []))

    html = (out / "report.html").read_text()
    best = runs["streetclip-full"]["best"]
    assert f"{best['geoscore']:.0f}" in html and "Commands reproducing each step" in html
    assert "geosolver evaluate --queries" in html and "Hardware" in html and "zero-shot-countries" in html
    assert "--prior none,text" in html and html.count("data:image/png;base64,") >= 4
    assert (out / "report.md").exists() and (out / "config.json").exists()

    # resumed: every step skipped, the hub not asked anything, the numbers unchanged
    hub.reset_log()
    assert cli_main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert set(again["steps"].values()) == {"skipped"}
    assert hub.requests == []
    assert again["runs"] == runs
