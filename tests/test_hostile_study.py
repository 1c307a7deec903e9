"""Hostile `geosolver study` invocations: a root missing a split, paths that do not exist, an encoder
neither cached nor reachable, nonsensical options, somebody else's folder as --out. Each is refused
with one line and exit code 2 before any work — no image read, nothing written (not even config.json)."""

from __future__ import annotations

import time

import pytest

from geosolver.cli import main as cli_main
from geosolver.study import StudyConfig, validate
from helpers_data import make_osv5m_tree
from hubstub import STREETCLIP_ID, free_closed_port, point_client_at, start_default_hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    stub = start_default_hub(tmp_path_factory.mktemp("hubstub"))
    yield stub
    stub.stop()


def _root(tmp_path, splits=("test", "train")):
    root = tmp_path / "osv5m"
    for s in splits:
        make_osv5m_tree(root, n_rows=12, split=s, missing_image=(), nan_latitude=())
    return root


def _study(capsys, root, out, *extra, model="histogram", baseline="efficientnet-lite0"):
    t = time.time()
    rc = cli_main(["study", "--root", str(root), "--out", str(out), "--model", model, "--baseline", baseline,
                   "--train-limit", "12", "--test-limit", "12", "--device", "cpu", "--no-progress", *extra])
    cap = capsys.readouterr()
    return rc, cap.err, cap.out, time.time() - t


def _one_line_refusal(rc, err, out_dir):
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out_dir.exists()  # validation writes nothing: no config.json, no stores


def test_a_root_with_only_the_test_split_is_refused_before_embedding(tmp_path, capsys):
    root, out = _root(tmp_path, splits=("test",)), tmp_path / "study"
    rc, err, printed, seconds = _study(capsys, root, out)
    _one_line_refusal(rc, err, out)
    assert "train" in err and "both splits" in err
    assert "estimate" not in printed and seconds < 30


def test_a_root_that_does_not_exist_says_so(tmp_path, capsys):
    out = tmp_path / "study"
    rc, err, printed, _ = _study(capsys, tmp_path / "nowhere", out)
    _one_line_refusal(rc, err, out)
    assert "nowhere: does not exist" in err and "estimate" not in printed


def test_a_root_without_the_train_images_is_refused(tmp_path, capsys):
    root, out = _root(tmp_path), tmp_path / "study"
    for p in sorted((root / "images" / "train").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / "images" / "train").rmdir()
    rc, err, _, _ = _study(capsys, root, out)
    _one_line_refusal(rc, err, out)
    assert "images/train does not exist" in err


def test_a_csv_without_coordinates_is_refused_from_its_header(tmp_path, capsys):
    root, out = _root(tmp_path), tmp_path / "study"
    (root / "train.csv").write_text("id,lat_bin,country\n1,2,FR\n")
    rc, err, _, _ = _study(capsys, root, out)
    _one_line_refusal(rc, err, out)
    assert "train.csv: no latitude column" in err


@pytest.mark.parametrize("model,words", [("./no/such/dir", "does not exist"), ("no-such-alias", "does not exist"),
                                         ("a/b/c", "does not exist")])
def test_an_encoder_that_does_not_exist_is_refused(tmp_path, capsys, model, words):
    root, out = _root(tmp_path), tmp_path / "study"
    rc, err, _, _ = _study(capsys, root, out, model=model)
    _one_line_refusal(rc, err, out)
    assert f"--model {model}: {words}" in err


def test_a_hub_model_neither_cached_nor_reachable_is_refused_in_seconds(tmp_path, capsys, monkeypatch):
    point_client_at(monkeypatch, f"http://127.0.0.1:{free_closed_port()}", tmp_path / "hf_home")
    root, out = _root(tmp_path), tmp_path / "study"
    rc, err, printed, seconds = _study(capsys, root, out, baseline="streetclip")
    _one_line_refusal(rc, err, out)
    assert "--baseline streetclip: not in the local cache" in err and "geosolver download model" in err
    assert "estimate" not in printed and seconds < 30


def test_a_reachable_hub_model_is_listed_not_downloaded(tmp_path, hub, monkeypatch):
    point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    root = _root(tmp_path)
    hub.reset_log()
    _, encoders = validate(StudyConfig(root=str(root), out=str(tmp_path / "study"), baseline="histogram", device="cpu"))
    assert encoders["model"].source == "hub" and encoders["model"].size_class == "ViT-L/14-336"
    weights = len(hub.repos[("model", STREETCLIP_ID)].files["model.safetensors"])
    assert encoders["model"].download_bytes >= weights  # the hub's listing, counted for the disk estimate
    assert hub.file_gets() == []  # nothing downloaded
    assert encoders["baseline"].source == "builtin"
    assert not (tmp_path / "study").exists()


BAD = [
    (["--train-limit", "5"], "--train-limit must be an integer >= 8"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--steps", "0"], "argument --steps"),
    (["--lr", "-1"], "argument --lr"),
    (["--train", "lora", "3"], "only 'last-blocks N' takes a number"),
    (["--train", "last-blocks", "0"], "--blocks (N of --train last-blocks N) must be"),
    (["--train-batch-size", "2"], "--train-batch-size must be an integer >= 4"),
]


@pytest.mark.parametrize("extra,words", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_options_are_refused_before_anything_is_read(tmp_path, capsys, extra, words):
    out = tmp_path / "study"
    try:
        rc, err, _, _ = _study(capsys, tmp_path / "nowhere", out, *extra)  # the options are checked before the root
    except SystemExit as e:  # refused by the parser
        rc, err = e.code, capsys.readouterr().err
        assert rc == 2 and words in err and not out.exists()
        return
    _one_line_refusal(rc, err, out)
    assert words in err


def test_somebody_elses_folder_is_not_taken_as_out(tmp_path, capsys):
    root, out = _root(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"command": "evaluate"}')
    (out / "notes.txt").write_text("keep me")
    rc, err, _, _ = _study(capsys, root, out)
    assert rc == 2 and "already holds" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    assert (out / "config.json").read_text() == '{"command": "evaluate"}'
