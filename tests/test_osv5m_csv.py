"""Reading OSV5M's CSV lean: only the columns asked for, streamed block by block (issue 20;
speed and memory at full size: benchmarks/osv5m_csv.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from geosolver.data import common
from geosolver.data.common import read_csv
from geosolver.data.osv5m import read_osv5m
from helpers_data import OSV5M_COLUMNS, make_osv5m_tree


def test_a_column_that_changes_type_after_the_first_block_is_widened(tmp_path, monkeypatch):
    # 64 KiB blocks: the first block holds only integers in b and c; later rows hold 1.5 and text
    monkeypatch.setattr(common, "_BLOCK_BYTES", 1 << 16)
    rows = ["a,b,c"] + [f"x{i},{i},{i}" for i in range(20_000)] + ["y,1.5,2", "z,,abc"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size > 4 * (1 << 16)
    df = read_csv(path)
    assert len(df) == 20_002
    assert df["b"].dtype == "float64" and df["b"].iloc[-2] == 1.5 and pd.isna(df["b"].iloc[-1])
    assert df["c"].iloc[-1] == "abc" and df["c"].iloc[-2] == "2" and df["c"].iloc[3] == "3"
    assert df["a"].iloc[0] == "x0"


def test_only_the_columns_asked_for_are_read(tmp_path):
    truth = make_osv5m_tree(tmp_path, n_rows=6, missing_image=(), nan_latitude=())
    t = read_osv5m(tmp_path, split="test", columns=["country", "climate", "Not-There"])
    assert list(t.columns) == ["id", "source", "lat", "lon", "country", "climate"]
    assert t["country"].tolist() == truth["country"].tolist()  # "NA" (Namibia) stays a string
    assert t["lat"].tolist() == pytest.approx(truth["latitude"].tolist())
    full = read_osv5m(tmp_path, split="test")
    assert len(full.columns) == 4 + len(OSV5M_COLUMNS) - 3
    pd.testing.assert_frame_equal(t[["id", "lat", "country", "climate"]], full[["id", "lat", "country", "climate"]])
