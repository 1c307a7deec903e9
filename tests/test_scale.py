"""Scale helpers outside the embedding engines: remote webdataset shards over fsspec, IVF-PQ sized
by a memory budget with recall measured at build time. (The engines: tests/test_engines.py.)"""

import json

import numpy as np
import pandas as pd
import pytest

from helpers_data import make_webdataset

from geosolver.data import read_dataset
from geosolver.store import EmbeddingStore, write_store


def test_webdataset_over_fsspec_memory(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    from geosolver.images import open_image

    truth = pd.concat([make_webdataset(tmp_path / f"shards-{k:06d}.tar", n=3, start=10 * k, orphan_image=False) for k in range(2)])
    mem = fsspec.filesystem("memory")
    for k in range(2):
        mem.pipe(f"/bucket/shards-{k:06d}.tar", (tmp_path / f"shards-{k:06d}.tar").read_bytes())
    try:
        table = read_dataset("webdataset", "memory://bucket/shards-{000000..000002}.tar")  # 000002 does not exist
        local = read_dataset("webdataset", str(tmp_path / "shards-{000000..000001}.tar"))
        assert list(table["id"]) == list(truth["id"])
        np.testing.assert_allclose(table["lat"], truth["lat"])
        assert all(s.startswith("tar://memory://bucket/shards-") for s in table["source"])
        for s_remote, s_local in zip(table["source"], local["source"]):
            assert np.array_equal(np.asarray(open_image(s_remote)), np.asarray(open_image(s_local)))
        glob_table = read_dataset("webdataset", "memory://bucket/shards-*.tar")
        assert list(glob_table["id"]) == list(truth["id"])
    finally:
        mem.rm("/bucket", recursive=True)


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, d)).astype(np.float32)
    x = centers[rng.integers(0, 64, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivfpq_plan_follows_the_budget_rule():
    from geosolver.index import IndexBuildError, plan_ivfpq

    p = plan_ivfpq(5_000_000, 768, 4.0)
    assert p["nlist"] == 8192 and p["pq_m"] == 64  # 4*sqrt(5e6)=8944 -> 8192; 5e6*(64+8) B = 0.36 GB fits 4 GB
    # 1.2 GB: the float32 training sample alone (39*8192 rows x 768 x 4 B = 0.98 GB) plus faiss's own
    # float32 copy of up to 65 536 rows for the PQ codebooks and their residuals (2 x 65 536 x 768 x 4 B
    # = 0.40 GB) is already over the budget, whatever pq_m: refused with the minimum it needs
    with pytest.raises(IndexBuildError, match="needs at least"):
        plan_ivfpq(5_000_000, 768, 1.2)
    roomy = plan_ivfpq(5_000_000, 768, 2.0)
    assert 768 % roomy["pq_m"] == 0 and roomy["bytes"] <= 2.0e9 and roomy["nlist"] == 8192
    assert plan_ivfpq(2000, 48, 1.0)["nlist"] <= 2000 // 39
    with pytest.raises(IndexBuildError, match="budget"):
        plan_ivfpq(5_000_000, 768, 0.5)


def test_ivfpq_with_budget_reports_recall_checked_independently(tmp_path):
    from geosolver.cli import main as cli_main
    from geosolver.index import load_index

    n, d = 3000, 32
    x = _clustered(n, d)
    meta = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "lat": np.zeros(n), "lon": np.zeros(n)})
    write_store(tmp_path / "g", x, meta, {"name": "synthetic", "dim": d}, shard_size=700)
    assert cli_main(["index", "build", str(tmp_path / "g"), "--kind", "ivfpq", "--memory-budget-gb", "0.5",
                     "--rerank", "0", "--recall-queries", "200", "--threads", "1"]) == 0
    info = json.loads((tmp_path / "g" / "index-ivfpq.json").read_text())
    s = info["settings"]
    assert s["nlist"] & (s["nlist"] - 1) == 0 and d % s["pq_m"] == 0 and s["memory_budget_gb"] == 0.5
    # recompute recall@10 with numpy brute force on the same query rows
    store = EmbeddingStore(tmp_path / "g")
    idx = load_index(tmp_path / "g" / "index-ivfpq.faiss")
    q_rows = np.asarray(s["recall_query_rows"])
    assert len(q_rows) == 200
    emb = store.embeddings()
    exact = np.argsort(-(emb[q_rows] @ emb.T), axis=1, kind="stable")[:, :10]
    _, approx = idx.search(emb[q_rows], 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert abs(recall - s["recall_at_10"]) < 0.02
    assert 0.2 < s["recall_at_10"] <= 1.0
