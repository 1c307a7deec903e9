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


# ----------------------------------------------------------------------------------------------
# the report's tables: random and oracle beside every run, and every column visible at 1400 px
# ----------------------------------------------------------------------------------------------
import re
import shutil
import subprocess

import pytest


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_tables") / "demo"
    assert cli_main(["demo", "--out", str(out), "--gallery", "240", "--queries", "40", "--models", "histogram", "--no-progress"]) == 0
    return out


def _section(md: str, heading: str) -> str:
    return md.split(heading, 1)[1].split("\n## ", 1)[0]


def test_best_row_table_has_random_and_oracle_beside_every_run(demo_out):
    summary = json.loads((demo_out / "summary.json").read_text())
    md = (demo_out / "report.md").read_text()
    best = _section(md, "## Best row of every run (with random and oracle references)")
    gallery = {"histogram-full": 240, "histogram-grouped-clustered-60": 60, "histogram-random-60": 60}
    assert set(summary["runs"]) == set(gallery)
    for run, n in gallery.items():
        refs = summary["runs"][run]["references"]
        for ref in ("random", "oracle"):
            # reference rows have no k: "–", never 0; the score is the run's own reference (summary.json)
            assert f"| {run} | histogram | {n} | {ref} | – | {refs[ref]['geoscore']:.0f} |" in best, (run, ref)
    assert "| 0 |" not in best
    html = (demo_out / "report.html").read_text()
    first_table = html.split("<table>", 2)[1]
    assert first_table.count("<td>random</td>") == 3 and first_table.count("<td>oracle</td>") == 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = (
    "<script>document.title = 'FIT:' + JSON.stringify([...document.querySelectorAll('table')].map(t => "
    "[Math.round(t.getBoundingClientRect().right - document.body.getBoundingClientRect().right), "
    "t.parentElement.scrollWidth - t.parentElement.clientWidth]));</script>"
)


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless chromium")
def test_report_tables_fit_a_1400px_window(demo_out, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text((demo_out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    fit = json.loads(re.search(r"<title>FIT:(.*?)</title>", dom).group(1))
    assert len(fit) >= 2
    for past_body, hidden in fit:  # px beyond the text column; px hidden behind a horizontal scrollbar
        assert past_body <= 0 and hidden <= 0, fit
