"""The one embedding pipeline on every engine: local, torchrun-style ranks and Ray write the same
store — byte-identical shard files, identical metadata and failure rows — and every engine that
can be killed resumes to that same store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers_data import make_folder_dataset

from geosolver.data import read_dataset
from geosolver.embed import embed
from geosolver.store import EmbeddingStore, StoreWriter

N_IMAGES = 13
SHARD = 4  # chunks of 4 inputs: 4 + 4 + 4 + 1
BAD = (2, 9)  # rows whose image is corrupt: failures in chunks 0 and 2
BATCH = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("engines_ds")
    df = make_folder_dataset(root, n=N_IMAGES, fmt=".jpg", size=(40, 30))
    for i in BAD:
        Path(df["file"][i]).write_bytes(b"not an image")
    return read_dataset("folder", root)


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    return tiny_clip


@pytest.fixture(scope="module")
def local_store(dataset, encoder, tmp_path_factory) -> EmbeddingStore:
    out = tmp_path_factory.mktemp("local") / "store"
    return embed(dataset, encoder, out, batch_size=BATCH, num_workers=0, shard_size=SHARD, progress=False).store


def assert_identical_stores(a: EmbeddingStore, b: EmbeddingStore, skip_chunks=()) -> None:
    """Same shard list (names, rows, inputs, checksums), byte-identical .npy files, same metadata
    rows and failures, both complete and verified."""
    keep = [i for i, s in enumerate(a.shards) if int(s.name[6:]) not in skip_chunks]
    assert [(s.name, s.rows, s.n_inputs) for s in a.shards] == [(s.name, s.rows, s.n_inputs) for s in b.shards]
    assert [a.shards[i].sha256 for i in keep] == [b.shards[i].sha256 for i in keep]
    for i in keep:
        name = a.shards[i].name
        assert (a.path / f"{name}.npy").read_bytes() == (b.path / f"{name}.npy").read_bytes(), name
    pd.testing.assert_frame_equal(a.metadata, b.metadata)
    pd.testing.assert_frame_equal(a.failures.reset_index(drop=True), b.failures.reset_index(drop=True))
    assert a.complete and b.complete and len(a) == len(b) and a.manifest["n_failures"] == b.manifest["n_failures"]
    assert not a.verify() and not b.verify()
    assert not list(b.path.glob("*.tmp*")) and not (b.path / "_chunks").exists()


def test_local_store_is_what_we_think(local_store, dataset):
    # independent expectations: rows in input order minus the bad ones, chunks of 4 inputs
    ok = [i for i in range(N_IMAGES) if i not in BAD]
    assert list(local_store.metadata["id"]) == [dataset["id"][i] for i in ok]
    assert [s.name for s in local_store.shards] == ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    assert [s.n_inputs for s in local_store.shards] == [4, 4, 4, 1]
    assert [s.rows for s in local_store.shards] == [3, 4, 3, 1]
    assert sorted(local_store.failures["id"]) == sorted(dataset["id"][i] for i in BAD)
    assert list(local_store.failures["shard"]) == ["shard-00000", "shard-00002"]


def test_chunk_commits_in_any_order_are_idempotent_and_merge_in_chunk_order(local_store, dataset, encoder, tmp_path):
    from geosolver.embed import EmbedError, merge
    from geosolver.embed.job import open_store

    out = tmp_path / "st"
    writer, plan = open_store(out, encoder.identity(), dataset, SHARD)
    assert plan.n_chunks == 4
    emb = local_store.embeddings()
    offs = local_store.offsets
    fails = local_store.failures
    with pytest.raises(EmbedError, match="not committed"):
        merge(out)
    for c in (3, 1, 0, 2, 1, 3):  # out of order, chunks 1 and 3 written twice (a retried task)
        lo, hi = plan.bounds(c)
        rows = [r for r in range(lo, hi) if r not in BAD]
        f = fails[fails["shard"] == f"shard-{c:05d}"][["id", "reason"]].to_dict("records")
        writer.commit_chunk(c, emb[offs[c] : offs[c + 1]], dataset.iloc[rows].reset_index(drop=True), f, hi - lo)
    assert writer.committed() == {0, 1, 2, 3}
    assert_identical_stores(local_store, merge(out))


def test_opening_a_store_with_pending_commits_keeps_them(local_store, dataset, encoder, tmp_path):
    """The first wave's trap: a writer opened on a store whose chunks were committed but not yet
    merged must keep those shards (they are committed), and only drop what no commit refers to."""
    from geosolver.embed.job import open_store

    out = tmp_path / "st"
    writer, plan = open_store(out, encoder.identity(), dataset, SHARD)
    lo, hi = plan.bounds(2)
    rows = [r for r in range(lo, hi) if r not in BAD]
    writer.commit_chunk(2, local_store.embeddings(range(7, 10)), dataset.iloc[rows].reset_index(drop=True),
                        local_store.failures.iloc[[1]][["id", "reason"]].to_dict("records"), hi - lo)
    (out / "shard-00003.npy").write_bytes(b"half a shard of a killed writer")  # no commit record
    again = StoreWriter(out, encoder.identity())
    assert again.committed() == {2} and (out / "shard-00002.npy").exists() and not (out / "shard-00003.npy").exists()
    res = embed(dataset, encoder, out, batch_size=BATCH, num_workers=0, progress=False)
    assert res.resumed_from == 4 and res.rows_embedded == 8  # chunks 0, 1, 3: 9 inputs, one bad
    assert_identical_stores(local_store, res.store)


def _cli(dataset_root, model, out, extra=()):
    return [sys.executable, "-m", "geosolver", "embed", "--dataset", "folder", "--root", str(dataset_root), "--model",
            str(model), "--out", str(out), "--batch-size", str(BATCH), "--num-workers", "0", "--no-progress", "--device",
            "cpu", "--precision", "fp32", "--shard-size", str(SHARD), *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run_ranks(root, model, out, world=2, kill_after_commit=False):
    """Run ``world`` rank processes; with ``kill_after_commit``, SIGKILL them all (as torchrun does
    when one rank dies) as soon as the first chunk is committed."""
    procs = {r: subprocess.Popen(_cli(root, model, out), env={**ENV, "WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r)},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)}
    if kill_after_commit:
        deadline = time.time() + 120
        while time.time() < deadline and not list(out.glob("_chunks/chunk-*.json")):
            time.sleep(0.005)
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
    return {r: (p.communicate(timeout=180)[0], p.returncode) for r, p in procs.items()}


ENGINES = ["local", "ranks", "ray"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_writes_the_byte_identical_store(engine, local_store, dataset, tiny_clip_dir, tmp_path, capsys):
    root = dataset.attrs["dataset"]["root"]
    out = tmp_path / f"{engine}_store"
    if engine == "local":
        r = subprocess.run(_cli(root, tiny_clip_dir, out), env=ENV, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
    elif engine == "ranks":
        res = _run_ranks(root, tiny_clip_dir, out)
        assert [rc for _, rc in res.values()] == [0, 0], res
        assert "rank 0/2" in res[0][0] and "rank 1/2" in res[1][0]
        assert EmbeddingStore(out).manifest["config"]["world_size"] == 2
    else:
        ray = pytest.importorskip("ray", reason="ray not installed (pip install 'geosolver[scale]')")
        from geosolver.cli import main as cli_main

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:  # through the CLI, which reuses the running Ray instance
            assert cli_main(_cli(root, tiny_clip_dir, out, ["--engine", "ray", "--ray-actors", "2"])[3:]) == 0
        finally:
            ray.shutdown()
        assert f"embedded {N_IMAGES - len(BAD)} image(s)" in capsys.readouterr().out
        assert EmbeddingStore(out).manifest["last_run"]["engine"] == "ray"
    assert_identical_stores(local_store, EmbeddingStore(out))


@pytest.mark.slow
def test_ranks_resume_after_sigkill_to_the_identical_store(encoder, tiny_clip_dir, tmp_path):
    root = tmp_path / "ds"
    make_folder_dataset(root, n=80, fmt=".jpg", size=(320, 240))  # 20 chunks: the kill lands mid-run
    table = read_dataset("folder", root)
    ref = embed(table, encoder, tmp_path / "ref", batch_size=BATCH, num_workers=0, shard_size=SHARD, progress=False).store
    out = tmp_path / "killed"
    res = _run_ranks(root, tiny_clip_dir, out, kill_after_commit=True)
    assert [rc for _, rc in res.values()] == [-signal.SIGKILL] * 2
    partial = EmbeddingStore(out)
    assert not partial.complete and 0 < len(StoreWriter(out, encoder.identity(), exclusive=False).committed()) < 20
    res = _run_ranks(root, tiny_clip_dir, out)
    assert [rc for _, rc in res.values()] == [0, 0], res
    assert_identical_stores(ref, EmbeddingStore(out))


@pytest.mark.slow
def test_ray_skips_committed_chunks_and_cleans_killed_writers(local_store, dataset, encoder, tiny_clip_dir, tmp_path, capsys):
    ray = pytest.importorskip("ray", reason="ray not installed (pip install 'geosolver[scale]')")
    from geosolver.embed.job import open_store

    out = tmp_path / "ray_store"
    # a killed earlier run committed chunk 1; mark it (negated embeddings) to see it is kept, not redone
    writer, plan = open_store(out, encoder.identity(), dataset, SHARD)
    lo, hi = plan.bounds(1)
    sentinel = -local_store.shard_embeddings(1).astype(np.float32)
    writer.commit_chunk(1, sentinel, dataset.iloc[[r for r in range(lo, hi) if r not in BAD]].reset_index(drop=True), [], hi - lo)
    (out / "shard-00002.npy.tmp999").write_bytes(b"junk of a killed writer")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        res = embed(dataset, encoder, out, engine="ray", batch_size=BATCH, progress=False)
    finally:
        ray.shutdown()
    # chunks 0, 2, 3 were embedded: 4 + 4 + 1 inputs, minus the 2 bad rows
    assert res.rows_embedded == 9 - len(BAD) and res.failures == len(BAD) and res.resumed_from == 4
    assert_identical_stores(local_store, res.store, skip_chunks=(1,))
    np.testing.assert_allclose(res.store.shard_embeddings(1).astype(np.float32), sentinel, atol=2e-3)


def test_merge_only_after_ranks_without_merge(local_store, dataset, encoder, tmp_path):
    from geosolver.cli import main as cli_main
    from geosolver.embed import rank_from_env

    assert rank_from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}) == (1, 3, 1)
    assert rank_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and rank_from_env({}) is None
    out = tmp_path / "m"
    r0 = embed(dataset, encoder, out, engine="ranks", rank=0, world_size=2, batch_size=BATCH, shard_size=SHARD,
               progress=False, merge_when_done=False)
    assert not EmbeddingStore(out).complete and r0.rows_embedded == 6  # chunks 0, 2: rows 0-3, 8-11 minus 2 and 9
    assert cli_main(["embed", "--merge-only", "--out", str(out)]) == 2  # chunks 1, 3 missing: clear error
    embed(dataset, encoder, out, engine="ranks", rank=1, world_size=2, batch_size=BATCH, progress=False, merge_when_done=False)
    assert cli_main(["embed", "--merge-only", "--out", str(out)]) == 0
    assert_identical_stores(local_store, EmbeddingStore(out))


def test_a_store_written_before_the_one_core_change_still_opens(tmp_path):
    """On-disk compatibility: a first-wave store (manifest listing shards, no _chunks) opens,
    resumes and verifies."""
    d = 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = tmp_path / "old"
    out.mkdir()
    from geosolver.files import atomic_write_npy

    digest = atomic_write_npy(out / "shard-00000.npy", x.astype(np.float16))
    pd.DataFrame({"id": list("abcde"), "lat": np.linspace(-10, 10, 5), "lon": np.linspace(0, 40, 5)}).to_parquet(out / "shard-00000.parquet", index=False)
    pd.DataFrame({"id": ["f"], "reason": ["OSError: bad"], "shard": ["shard-00000"]}).to_parquet(out / "failures.parquet", index=False)
    manifest = {"format_version": 1, "geosolver_version": "0.1.0", "created": "2026-11-01T00:00:00Z",
                "encoder": {"name": "old-enc", "revision": "r", "dim": d}, "dim": d, "dtype": "float16", "normalized": True,
                "rows": 5, "n_inputs": 6, "complete": True, "n_failures": 1,
                "shards": [{"name": "shard-00000", "rows": 5, "n_inputs": 6, "sha256": digest}], "config": {}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    st = EmbeddingStore(out)
    assert len(st) == 5 and not st.verify() and list(st.failures["id"]) == ["f"]
    np.testing.assert_allclose(st.embeddings(), x, atol=2e-3)
    w = StoreWriter(out, {"name": "old-enc", "revision": "r", "dim": d})
    w.write_shard(x[:2], pd.DataFrame({"id": ["g", "h"], "lat": [0.0, 1.0], "lon": [0.0, 1.0]}))
    st = w.finalize()
    assert [s.name for s in st.shards] == ["shard-00000", "shard-00001"] and len(st) == 7
    assert list(st.failures["id"]) == ["f"] and st.manifest["n_inputs"] == 8
