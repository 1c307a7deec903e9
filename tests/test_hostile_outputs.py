"""Hostile outputs: an ``--out`` that already holds the user's files is refused with one line and
exit code 2, every file byte-identical after; only a command's own earlier output is written into
again (or any folder with ``--overwrite``, which replaces same-named files and deletes nothing);
a store writer removes only files a store writer makes."""

import json

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main as cli_main
from geosolver.errors import OutputDirError, StoreError
from geosolver.rundir import RunDir, overwriting
from geosolver.store import StoreWriter, write_store
from helpers_data import make_folder_dataset

ENC = {"name": "enc", "dim": 8, "revision": "r1"}
USER_FILES = {
    "notes.txt": b"my notes\n",
    "x.tmp": b"a file the user calls .tmp",
    "shard-00001.npy": b"not a geosolver shard",
    "config.json": b'{"my": "own settings"}\n',
}


def _user_folder(path):
    path.mkdir(parents=True)
    for name, data in USER_FILES.items():
        (path / name).write_bytes(data)
    return path


def _unchanged(path) -> bool:
    return sorted(p.name for p in path.iterdir()) == sorted(USER_FILES) and all(
        (path / n).read_bytes() == data for n, data in USER_FILES.items())


def _store(path, n=12):
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "lat": np.linspace(-40, 40, n), "lon": np.linspace(-100, 100, n)})
    return write_store(path, rng.standard_normal((n, 8)).astype(np.float32), meta, ENC, shard_size=5)


def _argv(cmd, tmp_path, out):
    if cmd == "embed":
        make_folder_dataset(tmp_path / "data", n=3)
        return ["embed", "--root", str(tmp_path / "data"), "--model", "histogram", "--out", out, "--no-progress"]
    if cmd == "evaluate":
        _store(tmp_path / "q")
        return ["evaluate", "--queries", str(tmp_path / "q"), "--gallery", str(tmp_path / "q"), "--out", out, "--no-plots"]
    if cmd == "analyze":
        _store(tmp_path / "q")
        return ["analyze", str(tmp_path / "q"), "--out", out, "--sample", "10", "--no-progress"]
    if cmd == "demo":
        return ["demo", "--out", out, "--gallery", "20", "--queries", "5", "--no-progress"]
    if cmd == "terrain build":
        return ["terrain", "build", "--out", out, "--gallery", "4", "--queries", "2", "--no-progress"]
    if cmd in ("train", "study"):
        make_folder_dataset(tmp_path / "data", n=6)
        return [cmd, "--root", str(tmp_path / "data"), "--out", out]
    if cmd == "curate select":
        _store(tmp_path / "q")
        return ["curate", "select", str(tmp_path / "q"), "--out", out, "--size", "4"]
    raise AssertionError(cmd)


COMMANDS = ["embed", "evaluate", "analyze", "demo", "terrain build", "curate select", "train", "study"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_out_holding_the_users_files_is_refused_and_left_byte_identical(cmd, tmp_path, capsys):
    out = _user_folder(tmp_path / "mine")
    rc = cli_main(_argv(cmd, tmp_path, str(out)))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    # study may refuse a root that is not OSV5M first; either way nothing of the user's is touched
    assert "already holds" in lines[0] or "--overwrite" in lines[0] or cmd == "study", err  # says why, or names the way out
    assert _unchanged(out)


@pytest.mark.parametrize("cmd", ["evaluate", "analyze"])
def test_out_holding_a_store_or_another_commands_run_is_refused(cmd, tmp_path, capsys):
    _store(tmp_path / "store")
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()}
    assert cli_main(_argv(cmd, tmp_path / "a", str(tmp_path / "store"))) == 2
    assert "an embedding store" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()} == before
    RunDir(tmp_path / "other", "demo")
    assert cli_main(_argv(cmd, tmp_path / "b", str(tmp_path / "other"))) == 2
    assert "the output of `geosolver demo`" in capsys.readouterr().err


def test_a_commands_own_output_is_written_again_and_overwrite_keeps_other_files(tmp_path, capsys):
    argv = _argv("evaluate", tmp_path, str(tmp_path / "run"))
    assert cli_main(argv) == 0
    assert cli_main(argv) == 0  # a re-run into its own output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["command"] == "evaluate"
    out = _user_folder(tmp_path / "mine")
    assert cli_main(argv[:-2] + [str(out), "--no-plots", "--overwrite"]) == 0
    for name in ("notes.txt", "x.tmp", "shard-00001.npy"):  # nothing of the user's is deleted
        assert (out / name).read_bytes() == USER_FILES[name]
    assert json.loads((out / "config.json").read_text())["command"] == "evaluate"  # same name: replaced, as asked
    assert (out / "metrics.json").is_file()


def test_rundir_claims_a_new_folder_so_a_killed_run_can_be_rerun(tmp_path):
    RunDir(tmp_path / "run", "analyze")  # killed right after: only the claim is on disk
    (tmp_path / "run" / "stats.json").write_text("{}")
    RunDir(tmp_path / "run", "analyze")  # the re-run is accepted
    with pytest.raises(OutputDirError, match="the output of `geosolver analyze`"):
        RunDir(tmp_path / "run", "evaluate")
    with overwriting():
        RunDir(tmp_path / "run", "evaluate")
    with pytest.raises(OutputDirError, match="is a file"):
        RunDir(tmp_path / "run" / "stats.json", "evaluate")


def test_a_study_train_and_serve_folder_go_through_the_same_rule(tmp_path):
    out = _user_folder(tmp_path / "mine")
    for command in ("study", "train", "serve"):  # what study.py, train/loop.py and serve/app.py open
        with pytest.raises(OutputDirError, match="did not write"):
            RunDir(out, command)
    assert _unchanged(out)


def test_a_store_writer_refuses_a_folder_of_user_files(tmp_path):
    out = _user_folder(tmp_path / "mine")
    with pytest.raises(StoreError, match="not an embedding store"):
        StoreWriter(out, ENC)
    with pytest.raises(StoreError, match="not an embedding store"):
        _store(out)
    assert _unchanged(out)


def test_resuming_a_store_removes_only_what_a_store_writer_made(tmp_path):
    st = _store(tmp_path / "s")
    user = {"notes.tmp.txt": b"n", "x.tmp": b"x", "shard-00001.backup.npy": b"b", "shard-00001.npy.orig": b"o"}
    for name, data in user.items():
        (st.path / name).write_bytes(data)
    (st.path / "shard-00001.parquet.tmp4242").write_bytes(b"partial write of a killed writer")
    (st.path / "shard-00007.npy").write_bytes(b"a shard no commit refers to")
    StoreWriter(st.path, ENC)  # resume: the cleanup of killed writers runs
    assert not (st.path / "shard-00001.parquet.tmp4242").exists() and not (st.path / "shard-00007.npy").exists()
    assert {n: (st.path / n).read_bytes() for n in user} == user


def test_compare_out_does_not_replace_an_existing_file(tmp_path, capsys):
    argv = _argv("evaluate", tmp_path, str(tmp_path / "run"))
    assert cli_main(argv) == 0
    (tmp_path / "table.md").write_bytes(b"my table")
    assert cli_main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "table.md")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "table.md").read_bytes() == b"my table"
    assert cli_main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "table.md"), "--overwrite"]) == 0
    assert (tmp_path / "table.md").read_text().startswith("|")


def test_serve_save_uploads_into_the_users_folder_is_refused_at_start_up(tmp_path, capsys, monkeypatch):
    import geosolver.serve.app as app_mod
    from geosolver.encoders import load_encoder

    monkeypatch.setattr(app_mod, "serve", lambda *a, **k: pytest.fail("served into the user's folder"))
    enc = load_encoder("histogram")
    meta = pd.DataFrame({"id": ["a", "b"], "lat": [0.0, 10.0], "lon": [0.0, 10.0]})
    write_store(tmp_path / "g", np.random.default_rng(0).standard_normal((2, enc.dim)).astype(np.float32), meta, enc.identity())
    out = _user_folder(tmp_path / "mine")
    rc = cli_main(["serve", "--gallery", str(tmp_path / "g"), "--model", "histogram", "--save-uploads", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds" in err and len(err.strip().splitlines()) == 1
    assert _unchanged(out)
