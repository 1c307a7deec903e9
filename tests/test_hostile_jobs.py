"""Hostile conditions during a job: the disk fills up (or turns read-only, or refuses us) while
`embed` writes its shards. The CLI reports one line naming the cause and the file (exit code 2),
never a traceback; the store stays openable and a re-run resumes to exactly the rows of a clean run.
Ctrl-C stays exit code 130."""

import errno
import os

import numpy as np
import pytest

import geosolver.store
from geosolver.cli import main as cli_main
from geosolver.store import EmbeddingStore
from helpers_data import make_folder_dataset

N_IMAGES = 14
SHARD = 4  # 4 chunks: 4 + 4 + 4 + 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs_ds")
    make_folder_dataset(root, n=N_IMAGES, size=(48, 40))
    return root


def _embed(root, out) -> list[str]:
    return ["embed", "--dataset", "folder", "--root", str(root), "--model", "histogram", "--out", str(out),
            "--shard-size", str(SHARD), "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def clean_store(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs_clean") / "store"
    assert cli_main(_embed(dataset, out)) == 0
    return EmbeddingStore(out)


def _fail_on_shard(monkeypatch, nth: int, err: int, text: str) -> list:
    """Make the ``nth`` shard write (1-based) raise ``OSError(err, text, path)``, as the kernel would."""
    real = geosolver.store.atomic_write_npy
    calls = []

    def faulty(path, arr):
        calls.append(path)
        if len(calls) == nth:
            raise OSError(err, text, str(path))
        return real(path, arr)

    monkeypatch.setattr(geosolver.store, "atomic_write_npy", faulty)
    return calls


def _same_rows(a: EmbeddingStore, b: EmbeddingStore) -> None:
    assert len(a) == len(b) == N_IMAGES
    assert a.metadata["id"].tolist() == b.metadata["id"].tolist()
    np.testing.assert_array_equal(a.metadata[["lat", "lon"]].to_numpy(), b.metadata[["lat", "lon"]].to_numpy())
    np.testing.assert_array_equal(a.embeddings(), b.embeddings())


def test_disk_full_during_embed_is_one_line_and_the_rerun_completes(dataset, clean_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    calls = _fail_on_shard(monkeypatch, 2, errno.ENOSPC, "No space left on device")
    rc = cli_main(_embed(dataset, out))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "No space left on device" in err and "shard-00001.npy" in err, err
    assert len(calls) == 2  # nothing was written after the fault
    EmbeddingStore(out)  # the store on disk is intact: it opens (chunk 0 committed)
    monkeypatch.undo()  # space freed: the same command resumes
    assert cli_main(_embed(dataset, out)) == 0
    _same_rows(EmbeddingStore(out), clean_store)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EIO],
                         ids=lambda e: errno.errorcode[e])
def test_other_os_errors_during_embed_are_one_line_naming_the_cause_and_file(err, dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    _fail_on_shard(monkeypatch, 1, err, os.strerror(err))
    rc = cli_main(_embed(dataset, out))
    msg = capsys.readouterr().err.strip()
    assert rc == 2 and len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert os.strerror(err) in msg and "shard-00000.npy" in msg and msg.startswith("geosolver embed: error:"), msg


def test_ctrl_c_during_embed_is_still_exit_130(dataset, tmp_path, monkeypatch, capsys):
    def interrupted(path, arr):
        raise KeyboardInterrupt

    monkeypatch.setattr(geosolver.store, "atomic_write_npy", interrupted)
    assert cli_main(_embed(dataset, tmp_path / "store")) == 130
    assert "interrupted" in capsys.readouterr().err
