"""The built-in demo runs the whole pipeline and writes a report with real numbers."""

import json

from geosolver.cli import main as cli_main


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    rc = cli_main(["demo", "--out", str(out), "--gallery", "240", "--queries", "40", "--models", "histogram", "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    full = summary["runs"]["histogram-full"]
    # the colour histogram carries real geographic signal on the terrain world: it beats
    # guessing a random gallery location, and nothing beats the oracle
    assert full["best"]["geoscore"] > full["references"]["random"]["geoscore"]
    assert full["references"]["oracle"]["geoscore"] >= full["best"]["geoscore"]
    assert {"histogram-grouped-clustered-60", "histogram-random-60"} <= set(summary["runs"])
    html = (out / "report.html").read_text()
    assert "not comparable" in html and html.count("data:image/png;base64,") >= 4
    assert "oracle" in html and "densest" in html
    assert (out / "analysis" / "report.html").exists() and (out / "report.md").exists()
    # re-running reuses the world and the finished stores
    before = (out / "world" / "world.json").stat().st_mtime_ns
    assert cli_main(["demo", "--out", str(out), "--gallery", "240", "--queries", "40", "--models", "histogram", "--no-progress"]) == 0
    assert (out / "world" / "world.json").stat().st_mtime_ns == before
