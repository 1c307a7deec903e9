"""Hostile input to the location heads' entry points (`geosolver head train`, `--head DIR` of
locate / evaluate): one line naming what is wrong, exit code 2, nothing of the user's overwritten."""

from __future__ import annotations

import pytest

from geosolver.cli import main as cli_main
from helpers_heads import ENC, cluster_store

TRAIN = ["--epochs", "1", "--batch-size", "32", "--hidden", "16", "--max-per-cell", "30", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_heads")
    store, _ = cluster_store(d / "g", n_per=20)
    assert cli_main(["head", "train", "--gallery", str(store.path), "--kind", "cells", "--out", str(d / "head")] + TRAIN) == 0
    return {"dir": d, "store": store, "head": d / "head"}


def one_line_error(capsys, argv, words) -> None:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_an_unknown_head_kind_is_refused_by_the_parser(trained, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["head", "train", "--gallery", str(trained["store"].path), "--kind", "knn", "--out", str(trained["dir"] / "x")])
    assert e.value.code == 2 and "invalid choice: 'knn'" in capsys.readouterr().err
    assert not (trained["dir"] / "x").exists()


def test_a_missing_gallery_store_is_one_line(trained, capsys):
    one_line_error(capsys, ["head", "train", "--gallery", str(trained["dir"] / "nope"), "--kind", "cells",
                            "--out", str(trained["dir"] / "y")] + TRAIN, ["cannot open gallery store", "nope"])
    assert not (trained["dir"] / "y").exists()


@pytest.mark.parametrize("opt, value, words", [("--epochs", "0", ["epochs", ">= 1"]), ("--tau-km", "nan", ["tau_km", "finite"]),
                                              ("--val-fraction", "1.5", ["val_fraction"]), ("--device", "cuda:7", ["CUDA"])])
def test_bad_training_settings_are_one_line(trained, capsys, opt, value, words):
    argv = ["head", "train", "--gallery", str(trained["store"].path), "--kind", "flow", "--out", str(trained["dir"] / "z")] + TRAIN + [opt, value]
    one_line_error(capsys, argv, words)


def test_a_finished_head_is_never_overwritten(trained, capsys):
    before = (trained["head"] / "model.pt").read_bytes()
    one_line_error(capsys, ["head", "train", "--gallery", str(trained["store"].path), "--kind", "cells", "--out", str(trained["head"])] + TRAIN,
                   ["already holds a trained head"])
    assert (trained["head"] / "model.pt").read_bytes() == before


def test_a_head_from_another_encoder_or_dim_is_refused(trained, tmp_path, capsys):
    other_dim, _ = cluster_store(tmp_path / "dim8", n_per=5, encoder={"name": "synthetic-heads", "dim": 8})
    other_enc, _ = cluster_store(tmp_path / "enc", n_per=5, encoder={**ENC, "name": "another-encoder"})
    for g, words in ((other_dim, ["dim-16", "dim 8"]), (other_enc, ["another encoder"])):
        one_line_error(capsys, ["evaluate", "--queries", str(g.path), "--gallery", str(g.path), "--head", str(trained["head"]),
                                "--out", str(tmp_path / "run"), "--no-plots"], words)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_damaged_or_incomplete_head_directory_is_one_line(trained, tmp_path, capsys):
    import shutil

    g = str(trained["store"].path)
    base = ["evaluate", "--queries", g, "--gallery", g, "--out", str(tmp_path / "run"), "--no-plots", "--bootstrap", "0"]
    one_line_error(capsys, base + ["--head", str(tmp_path / "absent")], ["does not exist"])
    for name, damage, words in (("model.pt", b"\x00garbage", ["model.pt", "damaged"]), ("head.json", b"{not json", ["head.json", "damaged"]),
                                ("cells.npz", b"PK\x03\x04broken", ["cells.npz", "damaged"])):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(trained["head"], bad)
        (bad / name).write_bytes(damage)
        one_line_error(capsys, base + ["--head", str(bad)], words)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained["head"], unfinished)
    (unfinished / "head.json").unlink()
    one_line_error(capsys, base + ["--head", str(unfinished)], ["not a trained head", "resume"])


def test_a_damaged_training_state_is_one_line_and_left_in_place(trained, tmp_path, capsys):
    out = tmp_path / "resume"
    out.mkdir()
    (out / "state.pt").write_bytes(b"truncated")
    one_line_error(capsys, ["head", "train", "--gallery", str(trained["store"].path), "--kind", "cells", "--out", str(out)] + TRAIN,
                   ["state.pt", "damaged"])
    assert (out / "state.pt").read_bytes() == b"truncated"


@pytest.mark.parametrize("argv, words", [
    (["locate", "P", "--gallery", "G", "--fuse"], ["add --head DIR"]),
    (["locate", "P", "--gallery", "G", "--head", "H", "--head-weight", "2"], ["add --fuse"]),
    (["locate", "P", "--gallery", "G", "--head", "H", "--fuse", "--prior", "text"], ["one prior at a time"]),
    (["locate", "P", "--zero-shot", "countries", "--head", "H"], ["--head needs --gallery"]),
    (["evaluate", "--queries", "Q", "--gallery", "G", "--out", "O", "--fuse", "head"], ["add --head DIR"]),
])
def test_head_options_that_mean_nothing_get_one_line(argv, words, capsys):
    one_line_error(capsys, argv, words)
