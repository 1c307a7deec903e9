"""A hostile hub (or a proxy in front of it): HTML pages, JSON of the wrong shape, answers that never end.
`geosolver download` reads a bounded number of bytes, says in one line what is wrong, exits 2, and
writes nothing outside its root."""

from __future__ import annotations

import pytest

from geosolver.cli import main as cli_main
from hubstub import OSV5M_ID, STREETCLIP_ID, HubStub, Repo, osv5m_repo, point_client_at

INFO = f"/api/datasets/{OSV5M_ID}"
TREE = f"/api/datasets/{OSV5M_ID}/tree/"
FILES = f"/datasets/{OSV5M_ID}/resolve/"


@pytest.fixture(scope="module")
def stub():
    hub = HubStub({("dataset", OSV5M_ID): osv5m_repo(n_test=6, n_train=6),
                   ("model", STREETCLIP_ID): Repo({"config.json": b"{}", "model.safetensors": b"\0" * 4096})})
    yield hub
    hub.stop()


@pytest.fixture
def hub(stub, tmp_path, monkeypatch):
    point_client_at(monkeypatch, stub.endpoint, tmp_path / "hf_home")
    stub.hostile.clear()
    stub.sent.clear()
    stub.reset_log()
    yield stub
    stub.hostile.clear()


def _one_line_error(capsys, argv) -> str:
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    assert err.startswith("geosolver download: error:")
    return err


CASES = [  # (where, what the hub answers, what the error line says)
    (INFO, "html", "answered an HTML page where the hub answers JSON"),
    (TREE, "html", "answered an HTML page where the hub answers JSON"),
    (INFO, "json-list", "expected a JSON object with a 40-hex 'sha', got list"),
    (INFO, "json-no-sha", "the hub did not say which commit it serves"),
    (TREE, "json-object", "the hub's file list is not a JSON list"),
    (TREE, "json-no-size", "gives test.csv no valid size"),
    (TREE, "json-escape", "names a path outside the repository: '../../outside.txt'"),
]


@pytest.mark.parametrize("where,mode,says", CASES, ids=[f"{w.split('/')[-2] or 'tree'}-{m}" for w, m, _ in CASES])
def test_a_listing_that_is_not_the_hubs_is_one_line_exit_2(hub, tmp_path, capsys, where, mode, says):
    hub.hostile[where] = mode
    root = tmp_path / "osv"
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(root), "--no-progress"])
    assert says in err, err
    assert not root.exists() and not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("where", [INFO, TREE], ids=["info", "tree"])
def test_an_endless_json_answer_is_read_to_a_bound_then_refused(hub, tmp_path, capsys, monkeypatch, where):
    import geosolver.hubhttp as hh

    monkeypatch.setattr(hh, "MAX_JSON_BYTES", 2**20)
    hub.hostile[where] = "endless-json"
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(tmp_path / "osv"), "--dry-run"])
    assert "sent more than 1.0 MiB and was still sending" in err, err
    sent = max(hub.sent.values())
    # the client hung up after about its bound (socket buffers hold a few MiB more), not at the stub's 256 MiB
    assert sent < 32 * 2**20, sent


def test_an_endless_file_body_stops_at_the_listed_size(hub, tmp_path, capsys):
    hub.hostile[FILES] = "endless-body"
    root = tmp_path / "osv"
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(root), "--no-progress", "--workers", "1"])
    assert "the hub sent more than the" in err and "bytes its file list gives this file; stopped reading" in err, err
    assert max(hub.sent.values()) < 32 * 2**20
    assert not (root / "test.csv").exists()  # nothing unchecked is put in place
    # the next run with an honest hub: the (zero-filled) partial fails the sha256, the file is fetched whole
    hub.hostile.clear()
    hub.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    files = hub.repos[("dataset", OSV5M_ID)].files
    for p in ("test.csv", "images/test/00.zip", "images/test/01.zip"):
        assert (root / p).read_bytes() == files[p]


def test_an_html_page_instead_of_a_file_is_refused_by_its_size(hub, tmp_path, capsys):
    hub.hostile[FILES] = "html"
    root = tmp_path / "osv"
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(root), "--no-progress", "--workers", "1"])
    assert "the hub serves" in err and "bytes for this file but its file list says" in err, err
    assert not (root / "test.csv").exists()


def test_model_download_from_a_login_page_is_one_line_exit_2(hub, tmp_path, capsys):
    hub.hostile["/api/models/"] = "html"
    err = _one_line_error(capsys, ["download", "model", "streetclip", "--local-dir", str(tmp_path / "m")])
    assert "answered an HTML page" in err
    assert not (tmp_path / "m").exists()


def test_a_partial_longer_than_the_hubs_file_is_dropped_not_resumed_forever(hub, tmp_path, capsys, monkeypatch):
    """The file list says more bytes than `resolve` serves (a hub changing under us): the Range request is
    refused (416); the partial goes, so the next run starts the file afresh instead of failing again."""
    import geosolver.hub as gh

    real = gh._tree_files

    def longer(page, what):  # the listing claims test.csv is 10 bytes longer than it is
        return [gh.RemoteFile(f.path, f.size + 10, f.etag) if f.path == "test.csv" else f for f in real(page, what)]

    monkeypatch.setattr(gh, "_tree_files", longer)
    root = tmp_path / "osv"
    csv = hub.repos[("dataset", OSV5M_ID)].files["test.csv"]
    etag = hub.repos[("dataset", OSV5M_ID)].etags["test.csv"]
    part = gh.partial_path(root / ".cache/huggingface/download", "test.csv", etag)
    part.parent.mkdir(parents=True)
    part.write_bytes(csv + b"\0" * 5)  # longer than what the hub serves, shorter than what it lists
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(root), "--no-progress", "--shards", "1"])
    assert "cannot send bytes" in err and "(416)" in err and "partial file was removed" in err, err
    assert not part.exists()


def test_a_file_whose_served_checksum_is_not_the_listed_one_is_refused_before_a_byte_is_written(hub, tmp_path, capsys,
                                                                                                 monkeypatch):
    import geosolver.hub as gh

    real = gh._tree_files

    def stale(page, what):  # the listing names another content for test.csv than `resolve` serves
        return [gh.RemoteFile(f.path, f.size, "f" * 64) if f.path == "test.csv" else f for f in real(page, what)]

    monkeypatch.setattr(gh, "_tree_files", stale)
    root = tmp_path / "osv"
    err = _one_line_error(capsys, ["download", "osv5m", "--root", str(root), "--no-progress", "--shards", "1",
                                   "--workers", "1"])
    etag = hub.repos[("dataset", OSV5M_ID)].etags["test.csv"]
    assert f"serves content {etag[:16]}… (X-Linked-Etag) but its file list says ffffffffffffffff…" in err, err
    assert not list(root.rglob("test.csv*.partial")) and not (root / "test.csv").exists()
