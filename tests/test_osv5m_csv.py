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


def _reference(ids, ok, limit):
    """finish_table's rule, one row at a time: keep the first `limit` usable rows (a repeated id is not
    usable); skipped = the unusable rows before the (limit+1)-th usable one."""
    seen, kept, skipped = set(), [], []
    for i, (x, good) in enumerate(zip(ids, ok)):
        usable = good and x not in seen
        if usable:
            seen.add(x)
            if len(kept) == limit:
                break
            kept.append(i)
        else:
            skipped.append(i)
    return kept, skipped


@pytest.mark.parametrize("seed", range(6))
def test_a_limit_reads_only_the_rows_it_needs_and_gives_the_same_answer(seed):
    import numpy as np

    from geosolver.data.common import finish_table

    rng = np.random.default_rng(seed)
    n = 400
    ids = [f"i{v}" for v in rng.integers(0, 250, n)]  # many repeats
    ok = rng.random(n) > 0.3
    reasons = np.array([None if g else "invalid coordinates: x" for g in ok], dtype=object)
    lat = np.arange(n, dtype=np.float64) / 10
    meta = pd.DataFrame({"row": np.arange(n)})
    for limit in (1, 7, 50, 170, 1000):
        t = finish_table(ids, [f"s{i}" for i in range(n)], lat, lat, meta, reasons, {"csv": "x"}, limit=limit)
        kept, skipped = _reference(ids, ok, limit)
        assert t["row"].tolist() == kept, limit
        assert t.attrs["skipped"]["id"].tolist() == [ids[i] for i in skipped], limit
        assert t["source"].tolist() == [f"s{i}" for i in kept]


def test_with_a_limit_only_the_rows_that_decide_the_table_are_matched_to_images():
    import numpy as np

    from geosolver.data.osv5m import _match_images

    ids = pd.Series([f"{i}" for i in range(5000)], dtype="str")
    ok = np.ones(5000, dtype=bool)
    index = pd.DataFrame({"id": pd.Series([f"{i}" for i in range(3000, 5000)], dtype="str"),
                          "source": pd.Series([f"img/{i}.jpg" for i in range(3000, 5000)], dtype="str")})
    # the first images are at row 3000: the prefix grows 1044 -> 2088 -> 4176 rows, enough for 11 usable rows
    found = _match_images(ids, ok, index, limit=10)
    assert len(found) == 4176
    assert found.iloc[:3000].isna().all() and found.iloc[3000:].tolist() == [f"img/{i}.jpg" for i in range(3000, 4176)]
    assert len(_match_images(ids, ok, index, limit=None)) == 5000
    assert len(_match_images(ids, ok, index, limit=2000)) == 5000  # not enough usable rows: all of them


def test_a_limited_read_is_the_head_of_the_full_one(tmp_path):
    make_osv5m_tree(tmp_path, n_rows=15, missing_image=(1, 4), nan_latitude=(2,))
    full = read_osv5m(tmp_path, split="test")
    for limit in (1, 5, 11, 40):
        t = read_osv5m(tmp_path, split="test", limit=limit)
        pd.testing.assert_frame_equal(t, full.head(limit))
        cut = full["id"].iloc[limit] if limit < len(full) else None
        skipped = full.attrs["skipped"]
        if cut is not None:  # the skipped rows before the first row left out
            rows = [r for r in pd.read_csv(tmp_path / "test.csv", dtype={"id": str})["id"]]
            skipped = skipped[skipped["id"].map(rows.index) < rows.index(cut)]
        assert t.attrs["skipped"]["id"].tolist() == skipped["id"].tolist()
