import json

import numpy as np
import pandas as pd
import pytest

from geosolver.store import EmbeddingStore, StoreError, StoreWriter, encoder_compatible, write_store

ENC = {"name": "synthetic", "dim": 8, "revision": "r1"}


def _data(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    meta = pd.DataFrame(
        {"id": [f"img{i}" for i in range(n)], "lat": rng.uniform(-80, 80, n), "lon": rng.uniform(-180, 180, n), "country": ["FR"] * n}
    )
    return emb, meta


def test_roundtrip_normalises_and_keeps_order(tmp_path):
    emb, meta = _data(25)
    st = write_store(tmp_path / "s", emb, meta, ENC, shard_size=10)
    assert len(st) == 25 and len(st.shards) == 3 and st.dim == 8 and st.complete
    got = st.embeddings()
    expect = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expect, atol=2e-3)  # float16 storage
    pd.testing.assert_frame_equal(st.metadata, meta)
    # gathered rows across shard boundaries, in the requested order
    rows = [24, 0, 9, 10, 19, 20]
    np.testing.assert_array_equal(st.embeddings(rows), got[rows])
    assert st.shard_embeddings(0).dtype == np.float16
    assert isinstance(st.shard_embeddings(0), np.memmap)
    assert st.verify() == []
    batches = list(st.iter_batches(batch_size=4))
    assert sum(b.shape[0] for _, b in batches) == 25
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), got)


def test_subset_and_describe(tmp_path):
    emb, meta = _data(30)
    st = write_store(tmp_path / "s", emb, meta, ENC, shard_size=7)
    sub = st.subset([29, 3, 5], tmp_path / "sub")
    assert list(sub.metadata["id"]) == ["img29", "img3", "img5"]
    np.testing.assert_array_equal(sub.embeddings(), st.embeddings([29, 3, 5]))
    assert sub.encoder == st.encoder
    text = st.describe()
    assert "30 in 5 shard(s)" in text and "synthetic" in text and "country" in text


def test_verify_detects_corruption(tmp_path):
    emb, meta = _data(10)
    st = write_store(tmp_path / "s", emb, meta, ENC)
    f = tmp_path / "s" / "shard-00000.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0xFF
    f.write_bytes(bytes(raw))
    assert any("checksum" in p for p in EmbeddingStore(tmp_path / "s").verify())


def test_resume_discards_uncommitted_files_and_continues(tmp_path):
    emb, meta = _data(20)
    w = StoreWriter(tmp_path / "s", ENC)
    w.write_shard(emb[:10], meta.iloc[:10], failures=[{"id": "bad1", "reason": "corrupt"}], n_inputs=11)
    # simulate a crash after writing shard files and failures but before the manifest update
    (tmp_path / "s" / "shard-00001.npy").write_bytes(b"partial")
    (tmp_path / "s" / "shard-00001.parquet.tmp123").write_bytes(b"partial")
    w2 = StoreWriter(tmp_path / "s", ENC)
    assert w2.n_inputs_done == 11 and w2.rows == 10
    assert not (tmp_path / "s" / "shard-00001.npy").exists()
    assert not list((tmp_path / "s").glob("*.tmp*"))
    w2.write_shard(emb[10:], meta.iloc[10:].reset_index(drop=True))
    st = w2.finalize()
    assert len(st) == 20
    assert list(st.failures["id"]) == ["bad1"]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["n_inputs"] == 21


def test_resume_refuses_other_encoder_and_existing_store(tmp_path):
    emb, meta = _data(4)
    write_store(tmp_path / "s", emb, meta, ENC)
    with pytest.raises(StoreError, match="name differs"):
        StoreWriter(tmp_path / "s", {"name": "other", "dim": 8, "revision": "r1"})
    with pytest.raises(StoreError, match="already holds"):
        StoreWriter(tmp_path / "s", ENC, resume=False)


def test_bad_input_is_refused_with_clear_errors(tmp_path):
    emb, meta = _data(5)
    w = StoreWriter(tmp_path / "s", ENC)
    with pytest.raises(StoreError, match=r"\(rows, 8\)"):
        w.write_shard(emb[:, :4], meta)
    with pytest.raises(StoreError, match="lacks column"):
        w.write_shard(emb, meta.drop(columns=["lat"]))
    bad = meta.copy()
    bad.loc[2, "lat"] = np.nan
    with pytest.raises(StoreError, match="index 2"):
        w.write_shard(emb, bad)
    e2 = emb.copy()
    e2[0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        w.write_shard(e2, meta)
    with pytest.raises(StoreError, match="nothing does not exist"):
        EmbeddingStore(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not an embedding store"):
        EmbeddingStore(tmp_path / "empty")


def test_encoder_compatible():
    assert encoder_compatible(ENC, dict(ENC))[0]
    ok, why = encoder_compatible(ENC, {**ENC, "dim": 16})
    assert not ok and "dim" in why


def test_empty_store(tmp_path):
    st = write_store(tmp_path / "s", np.zeros((0, 8), np.float32), pd.DataFrame({"id": [], "lat": [], "lon": []}), ENC)
    assert len(st) == 0 and st.embeddings().shape == (0, 8)
