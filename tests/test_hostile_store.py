"""Hostile input against the store: every kind of damage gets one line naming the shard and what is
wrong (exit code 2 through the CLI), never a traceback; nothing outside the store is read; a second
writer is refused while the first holds the store."""

import json
import threading

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main as cli_main
from geosolver.errors import StoreError
from geosolver.store import EmbeddingStore, write_lock, write_store

ENC = {"name": "enc", "dim": 8, "revision": "r1"}


def _store(path, n=12, shard_size=5) -> EmbeddingStore:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    meta = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "lat": np.linspace(-40, 40, n), "lon": np.linspace(-100, 100, n)})
    return write_store(path, emb, meta, ENC, shard_size=shard_size)


def _truncate(p):
    p.write_bytes(p.read_bytes()[:100])


def _empty(p):
    p.write_bytes(b"")


def _nan(p):
    arr = np.load(p)
    arr[1, 3] = np.nan
    np.save(p, arr)


def _object_dtype(p):
    np.save(p, np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)


def _corrupt_parquet(p):
    q = p.with_suffix(".parquet")
    raw = bytearray(q.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    q.write_bytes(bytes(raw))


def _missing_parquet(p):
    p.with_suffix(".parquet").unlink()


DAMAGE = {
    "truncated npy": (_truncate, "cannot be read as an array"),
    "zero-byte npy": (_empty, "cannot be read as an array"),
    "NaN in a shard": (_nan, "non-finite"),
    "object-dtype npy": (_object_dtype, "cannot be read as an array"),
    "corrupt parquet": (_corrupt_parquet, "parquet cannot be read"),
    "missing parquet": (_missing_parquet, "parquet missing"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_verify_reports_damage_in_one_line_and_exits_2(kind, tmp_path, capsys):
    st = _store(tmp_path / "s")
    damage, fragment = DAMAGE[kind]
    damage(tmp_path / "s" / "shard-00001.npy")
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = [ln for ln in out.out.splitlines() if "shard-00001" in ln]
    assert lines and any(fragment in ln for ln in lines), out.out
    assert not any("shard-00000" in ln or "shard-00002" in ln for ln in out.out.splitlines()[1:])  # healthy shards: silent
    assert len(st) == 12


@pytest.mark.parametrize("kind", ["truncated npy", "NaN in a shard", "object-dtype npy"])
def test_search_refuses_a_damaged_shard_naming_it(kind, tmp_path):
    _store(tmp_path / "s")
    DAMAGE[kind][0](tmp_path / "s" / "shard-00001.npy")
    with pytest.raises(StoreError, match=r"shard-00001\.npy.*--verify"):
        EmbeddingStore(tmp_path / "s").embeddings()


def test_evaluate_on_a_nan_store_exits_2_instead_of_scoring(tmp_path, capsys):
    _store(tmp_path / "g")
    _store(tmp_path / "q")
    _nan(tmp_path / "g" / "shard-00002.npy")
    rc = cli_main(["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "g"), "--out", str(tmp_path / "run"), "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and "shard-00002.npy holds non-finite values" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["../evil_outside/victim", "/etc/passwd", "shard-00001/../../x", "shard-1", "notashard"])
def test_a_manifest_naming_files_outside_the_store_is_refused(name, tmp_path):
    _store(tmp_path / "s")
    outside = tmp_path / "evil_outside"
    outside.mkdir()
    pd.DataFrame({"id": ["victim"], "lat": [0.0], "lon": [0.0]}).to_parquet(outside / "victim.parquet")
    before = (outside / "victim.parquet").read_bytes()
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["shards"][0]["name"] = name
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="not a shard name of this store"):
        EmbeddingStore(tmp_path / "s")
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 2
    assert cli_main(["enrich", str(tmp_path / "s"), "--features", "land"]) == 2
    assert (outside / "victim.parquet").read_bytes() == before


def test_a_manifest_entry_without_sha256_is_one_line(tmp_path, capsys):
    _store(tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    del m["shards"][1]["sha256"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 2
    err = capsys.readouterr().err
    assert "shard-00001" in err and "damaged" in err and "Traceback" not in err


def test_a_second_writer_is_refused_while_the_first_holds_the_store(tmp_path):
    held, release = threading.Event(), threading.Event()

    def first():
        with write_lock(tmp_path / "s"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(StoreError, match="another process is writing"):
            with write_lock(tmp_path / "s"):
                pass
    finally:
        release.set()
        t.join()
    with write_lock(tmp_path / "s"):  # released: the next job may write
        pass


def test_out_pointing_at_a_file_is_one_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        with write_lock(f):
            pass


def test_a_job_that_fails_before_writing_leaves_no_directory_behind(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(RuntimeError):
        with write_lock(out):
            raise RuntimeError("bad --model")
    assert not out.exists()
    (tmp_path / "kept").mkdir()
    with write_lock(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # a directory the user made is never removed


def _rewrite_meta(store_dir, fn, shard="shard-00001"):
    p = store_dir / f"{shard}.parquet"
    fn(pd.read_parquet(p)).to_parquet(p, index=False)


META_DAMAGE = {  # what a hand-edited or foreign shard parquet can hold -> (a fragment of the one line,
    # refused by plain `info` too: structure is checked on load, coordinate ranges when coordinates are read)
    "lat stored as text": (lambda m: m.assign(lat=m["lat"].astype(str)), "values, not numbers (degrees)", True),
    "no lat column": (lambda m: m.drop(columns=["lat"]), "lacks column(s) ['lat']", True),
    "fewer rows than the shard": (lambda m: m.iloc[:2], "has 2 rows, manifest says 5", True),
    "lat 200": (lambda m: m.assign(lat=[200.0] + list(m["lat"][1:])), "1 invalid value(s); first at index 0: lat=200.0,", False),
    "NaN coordinates": (lambda m: m.assign(lon=[np.nan] + list(m["lon"][1:])), "lon=nan", False),
}


@pytest.mark.parametrize("kind", list(META_DAMAGE))
def test_damaged_shard_metadata_is_one_line_on_open_and_on_verify(kind, tmp_path, capsys):
    _store(tmp_path / "s")
    fn, fragment, on_load = META_DAMAGE[kind]
    _rewrite_meta(tmp_path / "s", fn)
    for argv in (["info", str(tmp_path / "s")] if on_load else [],
                 ["info", str(tmp_path / "s"), "--verify"],
                 ["evaluate", "--queries", str(tmp_path / "s"), "--gallery", str(tmp_path / "s"), "--out", str(tmp_path / "r")]):
        if not argv:
            continue
        rc = cli_main(argv)
        out = capsys.readouterr()
        assert rc == 2 and "Traceback" not in out.out + out.err, argv
        text = out.err if argv[-1] != "--verify" else out.out
        assert "shard-00001.parquet" in text and fragment in text, (argv, text)
    with pytest.raises(StoreError, match="shard-00001.parquet"):
        EmbeddingStore(tmp_path / "s").coords()  # what locate, serve, evaluate and analyze read


def test_a_gallery_with_lat_200_is_refused_by_locate_instead_of_guessing(tmp_path, capsys):
    from geosolver.encoders import load_encoder
    from helpers_data import make_jpeg

    enc = load_encoder("histogram")
    n = 6
    meta = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "lat": np.linspace(-40, 40, n), "lon": np.linspace(-100, 100, n)})
    write_store(tmp_path / "g", np.random.default_rng(0).standard_normal((n, enc.dim)).astype(np.float32), meta, enc.identity(),
                shard_size=3)
    _rewrite_meta(tmp_path / "g", lambda m: m.assign(lat=[200.0] * len(m)))
    photo = make_jpeg(tmp_path / "p.jpg")
    rc = cli_main(["locate", str(photo), "--gallery", str(tmp_path / "g"), "--model", "histogram", "--strategy", "nn"])
    err = capsys.readouterr().err
    assert rc == 2 and "shard-00001.parquet" in err and "lat=" in err and len(err.strip().splitlines()) == 1


def test_a_garbage_parquet_is_one_line_when_the_metadata_is_read(tmp_path, capsys):
    _store(tmp_path / "s")
    (tmp_path / "s" / "shard-00002.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    assert cli_main(["info", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "shard-00002.parquet cannot be read" in err and len(err.strip().splitlines()) == 1


MANIFEST_DAMAGE = {
    "no encoder": (lambda m: m.pop("encoder"), "no encoder identity"),
    "dim is text": (lambda m: m.update(dim="abc"), "dim 'abc' is not a positive integer"),
    "negative rows": (lambda m: m.update(rows=-5), "rows -5 is not a non-negative integer"),
    "rows disagree with the shards": (lambda m: m.update(rows=13), "rows 13 but its shards list 12 rows"),
    "negative shard rows": (lambda m: m["shards"][0].update(rows=-1), "cannot be negative"),
}


@pytest.mark.parametrize("kind", list(MANIFEST_DAMAGE))
def test_a_damaged_manifest_is_one_line_on_open(kind, tmp_path, capsys):
    _store(tmp_path / "s")
    mp = tmp_path / "s" / "manifest.json"
    m = json.loads(mp.read_text())
    fn, fragment = MANIFEST_DAMAGE[kind]
    fn(m)
    mp.write_text(json.dumps(m))
    assert cli_main(["info", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_verify_finds_duplicate_ids(tmp_path, capsys):
    _store(tmp_path / "s")
    _rewrite_meta(tmp_path / "s", lambda m: m.assign(id=["i0"] + list(m["id"][1:])))  # i0 is shard 0's first id too
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 2
    assert "1 duplicate id(s) (first 'i0')" in capsys.readouterr().out


def test_verify_finds_a_swapped_faiss_file(tmp_path, capsys):
    from geosolver.index import build_index

    st = _store(tmp_path / "s")
    build_index(st, kind="flat").save()
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 0
    capsys.readouterr()
    other = _store(tmp_path / "t", n=12)  # same rows and dim: only the checksum tells the files apart
    rng = np.random.default_rng(1)
    write_store(tmp_path / "u", rng.standard_normal((12, 8)).astype(np.float32), other.metadata, ENC)
    build_index(EmbeddingStore(tmp_path / "u"), kind="flat").save()
    (tmp_path / "s" / "index-flat.faiss").write_bytes((tmp_path / "u" / "index-flat.faiss").read_bytes())
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 2
    assert "index-flat.faiss checksum mismatch" in capsys.readouterr().out
