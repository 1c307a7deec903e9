"""The hostile-input catalogue: run every hostile-input test and print, per category, how many cases
there are and how many were handled (passed); then run ``benchmarks/serve_memory.py`` and report the
server's peak RSS growth under the concurrent pixel-bomb case.

What is run (one ``pytest`` process, per-test outcomes read back from its JUnit XML):

* every ``tests/test_hostile_*.py`` (data, store, CLI, jobs, models, ... -- new files are picked
  up by their name) and ``tests/test_serve_hostile.py``;
* ``tests/test_properties.py`` (property-based, hypothesis);
* the kill/resume tests, by node id: ``tests/test_embed.py`` (SIGKILL mid-embed, resume) and
  ``tests/test_engines.py`` (pending commits of a killed writer, torchrun ranks after SIGKILL, Ray
  workers killed).

Categories: a file is one category, except ``test_hostile_store.py``, whose tests split into
concurrent writers (the write lock), untrusted files (manifests naming files outside the store) and
damaged stores (the rest). ``handled`` = passed; skipped tests (e.g. the Ray one without ``ray``)
are counted in their own column and are not handled.

Run from the repo root (prints a markdown table for the README)::

    .venv/bin/python benchmarks/hostile.py [--no-serve-memory] [--requests 4] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

#: file → category (``test_hostile_store.py`` is split further by :func:`category`).
FILE_CATEGORY = {
    "test_hostile_data.py": "data faults",
    "test_hostile_jobs.py": "disk full / OS errors",
    "test_hostile_models.py": "untrusted files",
    "test_serve_hostile.py": "server abuse",
    "test_hostile_serve_bombs.py": "server abuse",
    "test_hostile_cli.py": "CLI arguments",
    "test_hostile_study.py": "study pre-flight checks",
    "test_hostile_text_play.py": "zero-shot, text prior & play",
    "test_hostile_outputs.py": "the user's files (--out)",
    "test_hostile_photos.py": "photo size caps & special files",
    "test_hostile_download.py": "hostile hub / proxy",
    "test_hostile_heads.py": "location heads",
    "test_properties.py": "property-based",
    "test_embed.py": "crash/kill",
    "test_engines.py": "crash/kill",
    "test_download.py": "crash/kill",
    "test_train_resume.py": "crash/kill",
    "test_heads.py": "crash/kill",
}
#: the crash/kill tests of files that hold other tests too, by node id (file::function).
KILL_TESTS = (
    "tests/test_embed.py::test_sigkill_then_resume_gives_identical_store",
    "tests/test_engines.py::test_opening_a_store_with_pending_commits_keeps_them",
    "tests/test_engines.py::test_ranks_resume_after_sigkill_to_the_identical_store",
    "tests/test_engines.py::test_ray_skips_committed_chunks_and_cleans_killed_writers",
    "tests/test_download.py::test_a_killed_or_interrupted_download_resumes_with_a_range_request_to_identical_bytes",
    "tests/test_download.py::test_a_connection_dropped_mid_zip_is_resumed_with_a_range_request",
    "tests/test_download.py::test_a_partial_file_that_does_not_match_the_hub_checksum_is_fetched_again_from_zero",
    "tests/test_train_resume.py::test_sigkilled_cli_run_resumes_to_the_same_weights",
    "tests/test_heads.py::test_a_killed_head_training_resumes_to_the_same_weights",
)
#: the order of the table's rows (categories not listed here follow, alphabetically).
ORDER = ("data faults", "crash/kill", "concurrent writers", "disk full / OS errors", "damaged stores", "untrusted files",
         "server abuse", "CLI arguments", "the user's files (--out)", "photo size caps & special files", "property-based",
         "zero-shot, text prior & play", "location heads")


def catalogue_paths() -> list[str]:
    """Test files and node ids to run, relative to the repo root."""
    files = sorted(p for p in TESTS.glob("test_hostile_*.py"))
    files += [TESTS / "test_serve_hostile.py", TESTS / "test_properties.py"]
    return [str(p.relative_to(REPO)) for p in files if p.exists()] + list(KILL_TESTS)


def category(file: str, name: str) -> str:
    """The category of test function ``name`` (no parameters) in test file ``file`` (base name)."""
    if file == "test_hostile_store.py":
        if "writer" in name or "lock" in name:
            return "concurrent writers"
        if "outside" in name or "untrusted" in name:
            return "untrusted files"
        return "damaged stores"
    return FILE_CATEGORY.get(file, file.removeprefix("test_hostile_").removesuffix(".py").replace("_", " "))


def outcomes(junit_xml: Path) -> list[tuple[str, str, str]]:
    """``(file, test name with parameters, outcome)`` per test case of a pytest JUnit XML;
    outcome is ``passed``, ``failed``, ``error`` or ``skipped``."""
    out = []
    for tc in ET.parse(junit_xml).getroot().iter("testcase"):
        mod = tc.get("classname", "")
        file = mod.split(".")[-1] + ".py" if mod else Path(tc.get("file", "")).name
        kids = {c.tag for c in tc}
        outcome = "failed" if "failure" in kids else "error" if "error" in kids else "skipped" if "skipped" in kids else "passed"
        out.append((file, tc.get("name", ""), outcome))
    return out


def tabulate(rows: list[tuple[str, str, str]]) -> "OrderedDict[str, dict[str, int]]":
    """Category → counts of cases, handled (passed), failed (+ errors) and skipped."""
    table: dict[str, dict[str, int]] = {}
    for file, name, outcome in rows:
        c = table.setdefault(category(file, name.split("[")[0]), {"cases": 0, "handled": 0, "failed": 0, "skipped": 0})
        c["cases"] += 1
        c["handled" if outcome == "passed" else "skipped" if outcome == "skipped" else "failed"] += 1
    key = lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)  # noqa: E731
    return OrderedDict((c, table[c]) for c in sorted(table, key=key))


def markdown(table: "OrderedDict[str, dict[str, int]]") -> str:
    lines = ["| category | cases | handled | failed | skipped |", "|---|---:|---:|---:|---:|"]
    for c, n in table.items():
        lines.append(f"| {c} | {n['cases']} | {n['handled']} | {n['failed']} | {n['skipped']} |")
    tot = {k: sum(n[k] for n in table.values()) for k in ("cases", "handled", "failed", "skipped")}
    lines.append(f"| **all** | **{tot['cases']}** | **{tot['handled']}** | **{tot['failed']}** | **{tot['skipped']}** |")
    return "\n".join(lines)


BOMB_LINE = re.compile(r"^bomb\s+(\d+)\s+(\S+)\s+([\d.]+) MB\s+([\d.]+) MB\s+([\d.]+) MB\s+(-?[\d.]+) MB")


def serve_memory(requests: int) -> dict | None:
    """Run ``benchmarks/serve_memory.py``; the bomb case's numbers, or None if its line is missing."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "serve_memory.py"), "--requests", str(requests)]
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout + proc.stderr[-2000:], flush=True)
    for line in proc.stdout.splitlines():
        m = BOMB_LINE.match(line)
        if m:
            return {"requests": int(m[1]), "status": m[2], "before_mb": float(m[3]), "peak_mb": float(m[4]),
                    "after_mb": float(m[5]), "growth_mb": float(m[6]), "rc": proc.returncode}
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-serve-memory", action="store_true", help="skip benchmarks/serve_memory.py")
    ap.add_argument("--requests", type=int, default=4, help="concurrent bomb uploads for serve_memory.py (default 4)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)

    paths = catalogue_paths()
    with tempfile.TemporaryDirectory(prefix="hostile_") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", f"--junitxml={xml}", *paths, *args.pytest_args]
        print(f"$ {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        print("\n".join(tail[-15:]), flush=True)
        if not xml.exists():
            print(f"pytest wrote no report (exit code {proc.returncode})", file=sys.stderr)
            return 2
        rows = outcomes(xml)
    table = tabulate(rows)
    print(f"\nHostile-input catalogue ({len(rows)} cases in {wall:.0f} s; handled = passed):\n")
    print(markdown(table))
    failed = sum(n["failed"] for n in table.values())

    if not args.no_serve_memory:
        print()
        bomb = serve_memory(args.requests)
        if bomb is None:
            print("serve_memory.py printed no bomb line", file=sys.stderr)
            return 2
        print(f"Server under {bomb['requests']} concurrent {13000}x{13000} PNG bombs (169 Mpx each): status codes {bomb['status']}, "
              f"peak RSS growth {bomb['growth_mb']:.0f} MB (RSS {bomb['before_mb']:.0f} MB before, {bomb['peak_mb']:.0f} MB peak).")
        failed += bomb["rc"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
