"""enrich: derived columns at known places, existing columns kept, atomic per-shard rewrite, manifest record."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main
from geosolver.enrich import EnrichError, enrich_store, parse_features
from geosolver.store import EmbeddingStore, write_store

# (lat, lon), then what geography says is there: country, Köppen class, IGBP class, land, 2° cell
PLACES = [
    ((51.5, -0.12), "GB", "Cfb", "urban and built-up", True, "c2:50N_2W"),  # London
    ((-5.0, -65.0), "BR", "Af", "evergreen broadleaf forest", True, "c2:6S_66W"),  # Amazon
    ((72.0, -40.0), "GL", "EF", "snow and ice", True, "c2:72N_40W"),  # Greenland ice sheet
    ((30.0, -40.0), None, "Ocean", "water", False, "c2:30N_40W"),  # mid-Atlantic
    ((-33.87, 151.21), "AU", "Cfa", "urban and built-up", True, "c2:34S_150E"),  # Sydney
]


def _store(path, extra: dict | None = None):
    lat = np.array([p[0][0] for p in PLACES])
    lon = np.array([p[0][1] for p in PLACES])
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(len(PLACES))], "lat": lat, "lon": lon, **(extra or {})})
    emb = np.random.default_rng(0).normal(size=(len(PLACES), 8)).astype(np.float32)
    return write_store(path, emb, meta, {"name": "test-encoder", "dim": 8}, shard_size=2)  # 3 shards


def test_enrich_adds_correct_columns(tmp_path):
    s = _store(tmp_path / "s")
    sha_before = [sh.sha256 for sh in s.shards]
    added = enrich_store(tmp_path / "s", progress=False)
    assert added == ["country", "climate", "land_cover", "land", "cell"]
    st = EmbeddingStore(tmp_path / "s")
    m = st.metadata
    assert list(m["id"]) == [f"r{i}" for i in range(len(PLACES))]
    for i, (_, cc, kg, lc, land, cell) in enumerate(PLACES):
        if cc is not None:
            assert m["country"][i] == cc
        assert m["climate"][i] == kg
        assert m["land_cover"][i] == lc
        assert bool(m["land"][i]) is land
        assert m["cell"][i] == cell
    assert st.verify() == [] and [sh.sha256 for sh in st.shards] == sha_before  # embeddings untouched
    assert not [p for p in (tmp_path / "s").iterdir() if ".tmp" in p.name]
    rec = json.loads((tmp_path / "s" / "manifest.json").read_text())["enriched"]
    assert len(rec) == 1 and rec[0]["added"] == added and rec[0]["cell_size"] == 2.0


def test_existing_columns_are_kept_unless_overwrite(tmp_path):
    own = {"land_cover": ["osv5m-own"] * len(PLACES), "climate": ["x"] * len(PLACES)}
    _store(tmp_path / "s", own)
    added = enrich_store(tmp_path / "s", "land_cover,climate,cell", cell_size=10.0, progress=False)
    assert added == ["cell"]
    m = EmbeddingStore(tmp_path / "s").metadata
    assert (m["land_cover"] == "osv5m-own").all() and (m["climate"] == "x").all()
    assert m["cell"][0] == "c10:50N_10W"  # 10° cell of London: lat [50, 60), lon [-10, 0)
    assert enrich_store(tmp_path / "s", "cell", progress=False) == []  # nothing left to add
    added = enrich_store(tmp_path / "s", ["land_cover", "cell"], overwrite=True, progress=False)
    assert added == ["land_cover", "cell"]
    m = EmbeddingStore(tmp_path / "s").metadata
    assert m["land_cover"][0] == "urban and built-up" and m["cell"][0] == "c2:50N_2W"
    assert (m["climate"] == "x").all()  # not asked for: untouched
    rec = json.loads((tmp_path / "s" / "manifest.json").read_text())["enriched"]
    assert [r["added"] for r in rec] == [["cell"], [], ["land_cover", "cell"]]


def test_partially_enriched_store_is_completed(tmp_path):
    # as after a run killed between shards: one shard already has the column, the others do not
    s = _store(tmp_path / "s")
    p0 = tmp_path / "s" / f"{s.shards[0].name}.parquet"
    df = pd.read_parquet(p0)
    df["country"] = "ZZ"
    df.to_parquet(p0, index=False)
    assert enrich_store(tmp_path / "s", "country", progress=False) == ["country"]
    m = EmbeddingStore(tmp_path / "s").metadata
    assert list(m["country"][:2]) == ["ZZ", "ZZ"] and m["country"][4] == "AU"


def test_bad_requests(tmp_path):
    _store(tmp_path / "s")
    with pytest.raises(EnrichError, match="soil"):
        enrich_store(tmp_path / "s", "country,soil", progress=False)
    with pytest.raises(EnrichError):
        enrich_store(tmp_path / "s", "cell", cell_size=0, progress=False)
    assert parse_features(" country, cell,country ") == ["country", "cell"]


def test_cli(tmp_path, capsys):
    _store(tmp_path / "s", {"climate": ["keep"] * len(PLACES)})
    assert main(["enrich", str(tmp_path / "s"), "--features", "climate,land", "--no-progress"]) == 0
    assert "land" in capsys.readouterr().out
    m = EmbeddingStore(tmp_path / "s").metadata
    assert (m["climate"] == "keep").all() and list(m["land"]) == [p[4] for p in PLACES]
    assert main(["enrich", str(tmp_path / "s"), "--features", "elevation"]) == 2
    assert main(["enrich", str(tmp_path / "nope")]) == 2
