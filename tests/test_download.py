"""`geosolver download` through the real huggingface_hub client against a local hub stand-in (tests/hubstub.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geosolver.cli import main as cli_main
from hubstub import OSV5M_ID, STREETCLIP_ID, free_closed_port, point_client_at, start_default_hub

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    # pad_bytes: zips of ~0.3 MB, so a slowly served one can be interrupted half-way
    stub = start_default_hub(tmp_path_factory.mktemp("hubstub"), pad_bytes=300_000)
    yield stub
    stub.stop()


@pytest.fixture
def client(hub, tmp_path, monkeypatch):
    """This process's huggingface_hub pointed at the stub, a fresh HF_HOME, a clean request log."""
    point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
    hub.reset_log()
    hub.drop_once.clear()
    hub.trickle.clear()
    hub.range_slack = 0
    hub.xet = False
    return hub


def _files(hub, repo=("dataset", OSV5M_ID)):
    return hub.repos[repo].files


def _subenv(hub, hf_home) -> dict:
    env = dict(os.environ, **hub.env(hf_home))
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_dry_run_lists_every_file_with_its_size_and_writes_nothing(client, tmp_path, capsys):
    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    files = _files(client)
    for p in ("test.csv", "train.csv", "images/test/00.zip", "images/test/01.zip", "images/train/00.zip", "images/train/01.zip"):
        assert p in out
    total = sum(len(files[p]) for p in files if p.endswith((".csv", ".zip")))
    from geosolver.hub import human_bytes

    assert f"6 file(s), {human_bytes(total)} in all" in out
    assert "README.md" not in out  # only what the reader needs
    assert not client.file_gets() and not (root / "test.csv").exists()


def test_download_lands_where_the_reader_finds_it_and_a_second_run_fetches_nothing(client, tmp_path, capsys):
    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "split='test'): 24 images" in out and "split='train'): 48 images" in out
    files = _files(client)
    for p in ("test.csv", "train.csv", "images/test/00.zip", "images/train/01.zip"):
        assert (root / p).read_bytes() == files[p]
    from geosolver.data import read_dataset

    t = read_dataset("osv5m", root, split="test")
    assert len(t) == 24 and t["source"].str.startswith("zip://").all()
    assert len(client.file_gets()) == 6

    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--no-progress"]) == 0
    assert "fetched 0 file(s)" in capsys.readouterr().out
    assert client.file_gets() == []
    # exactly the repo info and the tree listing: no HEAD, no GET of any file
    assert [r[0] for r in client.requests] == ["GET", "GET"]
    assert all(r[1].startswith("/api/") for r in client.requests)


def test_shards_takes_only_the_first_zips(client, tmp_path, capsys):
    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "test", "--shards", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (root / "images/test/00.zip").exists() and not (root / "images/test/01.zip").exists()
    assert not (root / "train.csv").exists()
    assert "split='test'): 12 images (12 CSV rows have no image" in out
    assert sorted(r[1].rsplit("/", 1)[-1] for r in client.file_gets()) == ["00.zip", "test.csv"]


def test_extract_unpacks_removes_zips_and_stays_idempotent(client, tmp_path, capsys):
    from geosolver.data import read_dataset

    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--extract", "--no-progress"]) == 0
    assert not list((root / "images/test").glob("*.zip"))
    assert (root / "images/test/00").is_dir() and (root / "images/test/01/01").is_dir()
    t = read_dataset("osv5m", root, split="test")
    assert len(t) == 24 and not t["source"].str.startswith("zip://").any()
    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--extract", "--no-progress"]) == 0
    assert client.file_gets() == []


def _range_start(req) -> int:
    """The first byte a logged GET asked for (0 without a Range header)."""
    return int(req[2].removeprefix("bytes=").split("-")[0]) if req[2] else 0


def test_a_connection_dropped_mid_zip_is_resumed_with_a_range_request(client, tmp_path):
    root = tmp_path / "osv"
    zname = "images/test/01.zip"
    client.drop_once.add(zname)  # the stub sends half the bytes, then hangs up
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    assert not client.drop_once  # the fault fired
    gets = [r for r in client.file_gets() if r[1].endswith(zname)]
    half = len(_files(client)[zname]) // 2
    # the first GET from byte 0, the second exactly where the cut came: every received byte was kept
    assert [_range_start(r) for r in gets] == [0, half], gets
    for p in ("test.csv", "images/test/00.zip", zname):
        assert (root / p).read_bytes() == _files(client)[p]
    assert not list((root / ".cache/huggingface/download").rglob("*.partial"))


def test_a_range_answer_that_starts_earlier_than_asked_is_written_where_it_starts(client, tmp_path):
    root = tmp_path / "osv"
    zname = "images/test/01.zip"
    client.drop_once.add(zname)
    client.range_slack = 1000  # the resumed answer repeats the last 1000 bytes already on disk
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    gets = [r for r in client.file_gets() if r[1].endswith(zname)]
    assert [_range_start(r) for r in gets] == [0, len(_files(client)[zname]) // 2]
    assert (root / zname).read_bytes() == _files(client)[zname]  # no duplicated overlap


def test_a_xet_backed_repo_with_hf_xet_installed_resumes_the_same_way(client, tmp_path, monkeypatch):
    """huggingface_hub would take its Xet path here (hf_xet is installed, the hub advertises Xet), which writes
    a process-unique temporary file (no resume after a kill); geosolver reads `resolve` over HTTP instead."""
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "0")
    client.xet = True
    root = tmp_path / "osv"
    zname = "images/test/01.zip"
    client.drop_once.add(zname)
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    gets = [r for r in client.file_gets() if r[1].endswith(zname)]
    assert [_range_start(r) for r in gets] == [0, len(_files(client)[zname]) // 2]
    assert not [r for r in client.requests if "xet" in r[1]]  # the Xet path was not taken
    for p in ("test.csv", "images/test/00.zip", zname):
        assert (root / p).read_bytes() == _files(client)[p]


def _start_and_stop(client, root, hf_home, sig, zname="images/test/01.zip"):
    """Run `geosolver download osv5m` in a subprocess and send it ``sig`` once part of ``zname`` arrived."""
    cmd = [sys.executable, "-m", "geosolver", "download", "osv5m", "--root", str(root), "--workers", "1", "--no-check"]
    proc = subprocess.Popen(cmd, env=_subenv(client, hf_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not any(r[1].endswith(zname) for r in client.file_gets()):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # some of the zip has arrived
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return proc.returncode, err.decode()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_a_killed_or_interrupted_download_resumes_with_a_range_request_to_identical_bytes(client, tmp_path, capsys, sig):
    root = tmp_path / "osv"
    zname = "images/test/01.zip"
    client.trickle[zname] = 60_000.0  # ~5 s for this zip: time to stop the process mid-file
    rc, err = _start_and_stop(client, root, tmp_path / "hf_sub", sig)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 130 and "partial files are kept" in err and "Traceback" not in err, err
    assert not (root / zname).exists()
    partials = list((root / ".cache/huggingface/download").rglob("*.partial"))
    assert len(partials) == 1
    kept = partials[0].stat().st_size
    whole = _files(client)[zname]
    assert 0 < kept < len(whole) and partials[0].read_bytes() == whole[:kept]  # a prefix of the file, nothing else
    assert (root / "images/test/00.zip").read_bytes() == _files(client)["images/test/00.zip"]

    client.trickle.clear()
    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    out = capsys.readouterr().out
    gets = client.file_gets()
    assert [r[1].rsplit("/", 1)[-1] for r in gets] == ["01.zip"]  # finished files are kept
    assert _range_start(gets[0]) == kept > 0  # resumed where the killed run stopped
    assert "fetched 1 file(s)" in out and "already in partial files (resumed)" in out
    from geosolver.hub import human_bytes

    assert f"received {human_bytes(len(whole) - kept)}" in out
    for p in ("test.csv", "images/test/00.zip", zname):
        assert (root / p).read_bytes() == _files(client)[p]
    assert not list((root / ".cache/huggingface/download").rglob("*.partial"))


def test_a_partial_file_that_does_not_match_the_hub_checksum_is_fetched_again_from_zero(client, tmp_path, capsys):
    from geosolver.hubhttp import partial_path

    root = tmp_path / "osv"
    zname = "images/test/01.zip"
    whole = _files(client)[zname]
    etag = client.repos[("dataset", OSV5M_ID)].etags[zname]
    part = partial_path(root / ".cache/huggingface/download", zname, etag)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000 + whole[1000:5000])  # a damaged prefix: the size is right, the bytes are not
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    gets = [r for r in client.file_gets() if r[1].endswith(zname)]
    assert [_range_start(r) for r in gets] == [5000, 0]  # resumed, the sha256 did not match, fetched whole
    assert (root / zname).read_bytes() == whole


def test_after_the_dataset_authors_script_nothing_is_fetched_again(client, tmp_path, capsys):
    """osv5m's README: snapshot_download(local_dir=...), then every zip extracted where it lies and deleted."""
    import zipfile

    from huggingface_hub import snapshot_download

    root = tmp_path / "osv"
    snapshot_download(repo_id=OSV5M_ID, repo_type="dataset", local_dir=str(root))
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".zip"):
                with zipfile.ZipFile(os.path.join(dirpath, name)) as z:
                    z.extractall(dirpath)
                os.remove(os.path.join(dirpath, name))
    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--split", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert client.file_gets() == []
    assert "fetched 0 file(s)" in out and "6 already present" in out
    assert "split='test'): 24 images" in out and "split='train'): 48 images" in out  # the extracted images are read


def test_a_zip_removed_by_hand_without_its_images_is_fetched_again(client, tmp_path, capsys):
    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    (root / "images/test/01.zip").unlink()  # its download record stays, but no image is there
    (root / "images/test/00.zip").unlink()
    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    assert sorted(r[1].rsplit("/", 1)[-1] for r in client.file_gets()) == ["00.zip", "01.zip"]


def test_a_file_changed_on_the_hub_with_the_same_size_is_counted_and_fetched(tmp_path, monkeypatch, capsys):
    from hubstub import HubStub, Repo, osv5m_repo

    repo = osv5m_repo(n_test=6, n_train=6)
    with HubStub({("dataset", OSV5M_ID): repo}) as hub:
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
        root = tmp_path / "osv"
        assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
        capsys.readouterr()
        files = dict(repo.files)
        old = files["test.csv"]
        new = old.replace(b"FRA", b"ESP") if b"FRA" in old else old[:-2] + bytes([old[-2] ^ 1]) + old[-1:]
        assert len(new) == len(old) and new != old
        files["test.csv"] = new
        hub.repos[("dataset", OSV5M_ID)] = Repo(files)  # a new commit: one file changed, same size
        from geosolver.hub import human_bytes

        assert cli_main(["download", "osv5m", "--root", str(root), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"1 to fetch ({human_bytes(len(new))})" in out and "2 already present" in out
        assert [ln.split()[-2:] for ln in out.splitlines() if ln.endswith("test.csv")] == [["fetch", "test.csv"]]
        hub.reset_log()
        bars = []

        class Bar:  # the progress bar, as on a terminal
            def __init__(self, total=None, initial=0, **kw):
                self.total, self.n = total, initial
                bars.append(self)

            def update(self, n):
                self.n += n

            def close(self):
                pass

        import tqdm.auto

        monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        assert cli_main(["download", "osv5m", "--root", str(root), "--no-check"]) == 0
        out = capsys.readouterr().out
        assert f"fetched 1 file(s), {human_bytes(len(new))}" in out and "2 already present" in out
        assert [(b.total, b.n) for b in bars] == [(len(new), len(new))]
        assert [r[1].rsplit("/", 1)[-1] for r in hub.file_gets()] == ["test.csv"]
        assert (root / "test.csv").read_bytes() == new


def test_a_copied_root_without_download_records_is_recognised_by_checksum(client, tmp_path, capsys):
    root = tmp_path / "osv"
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check"]) == 0
    copy = tmp_path / "copy"
    for p in ("test.csv", "images/test/00.zip", "images/test/01.zip"):
        (copy / p).parent.mkdir(parents=True, exist_ok=True)
        (copy / p).write_bytes((root / p).read_bytes())
    (copy / "images/test/01.zip").write_bytes(b"x" * len(_files(client)["images/test/01.zip"]))  # right size, wrong bytes
    client.reset_log()
    assert cli_main(["download", "osv5m", "--root", str(copy), "--no-progress", "--no-check"]) == 0
    assert [r[1].rsplit("/", 1)[-1] for r in client.file_gets()] == ["01.zip"]
    assert (copy / "images/test/01.zip").read_bytes() == _files(client)["images/test/01.zip"]


def test_without_network_one_line_exit_2_within_seconds(tmp_path):
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{free_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="0", PYTHONPATH=SRC)
    for args in (["osv5m", "--root", str(tmp_path / "osv")], ["model", "streetclip"]):
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "geosolver", "download", *args], env=env, capture_output=True, text=True, timeout=60)
        took = time.time() - t
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("geosolver download: error:") and "cannot reach the Hugging Face hub" in lines[0]
        assert "run the same command again" in lines[0]
        assert took < 15, took
    assert not (tmp_path / "osv" / "test.csv").exists()


def test_hf_hub_offline_is_named_in_the_error(client, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli_main(["download", "osv5m", "--root", str(tmp_path / "osv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "HF_HUB_OFFLINE=1 is set" in err and len(err.splitlines()) == 1
    assert client.requests == []


def test_model_download_then_load_offline(client, tmp_path, capsys):
    d = tmp_path / "streetclip"
    assert cli_main(["download", "model", "streetclip", "--local-dir", str(d), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(d)
    files = _files(client, ("model", STREETCLIP_ID))
    assert (d / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert cli_main(["download", "model", "streetclip", "--no-progress"]) == 0  # into the (temp) HF cache
    cached = capsys.readouterr().out.strip().splitlines()[-1]
    assert "models--geolocal--StreetCLIP/snapshots/" in cached
    client.reset_log()
    assert cli_main(["download", "model", "geolocal/StreetCLIP", "--local-dir", str(d), "--no-progress"]) == 0
    assert client.file_gets() == []

    # a fresh process, offline, and no hub at all: by directory, by cached snapshot and by alias
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{free_closed_port()}",
               HF_HOME=os.environ["HF_HOME"], HF_HUB_CACHE=os.environ["HF_HUB_CACHE"], PYTHONPATH=SRC)
    code = (
        "import sys\nfrom geosolver.encoders import load_encoder\n"
        "for name in sys.argv[1:]:\n"
        "    e = load_encoder(name, device='cpu')\n"
        "    print(name, e.embed_images([__import__('PIL.Image').Image.new('RGB', (40, 30), (9, 99, 199))]).shape)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(d), cached, "streetclip"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("(1, 16)") == 3, r.stdout


def test_built_in_encoders_have_nothing_to_download(capsys):
    assert cli_main(["download", "model", "histogram"]) == 2
    assert "built in" in capsys.readouterr().err


def test_a_hub_model_that_cannot_load_points_to_geosolver_download_and_only_text_towers_for_zero_shot(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from geosolver.encoders import load_encoder
    from geosolver.errors import EncoderError

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError) as e:
        load_encoder("streetclip", device="cpu")
    msg = str(e.value)
    assert "`geosolver download model geolocal/StreetCLIP --local-dir DIR`" in msg and "hf download" not in msg
    # the offline encoders are offered for kNN only: they have no text tower for zero-shot / the text prior
    assert "for kNN only" in msg and "no text tower, so no zero-shot" in msg


def test_a_stale_partial_of_an_older_content_goes_when_the_file_is_finished(client, tmp_path):
    from geosolver.hubhttp import partial_path

    root = tmp_path / "osv"
    parts = root / ".cache/huggingface/download"
    old = partial_path(parts, "test.csv", "ab" * 32)  # a partial of another content of test.csv
    old.parent.mkdir(parents=True)
    old.write_bytes(b"stale")
    assert cli_main(["download", "osv5m", "--root", str(root), "--no-progress", "--no-check", "--shards", "1"]) == 0
    gets = [r for r in client.file_gets() if r[1].endswith("test.csv")]
    assert [_range_start(r) for r in gets] == [0]  # never resumed from another content's bytes
    assert not old.exists() and (root / "test.csv").read_bytes() == _files(client)["test.csv"]


def test_a_model_killed_mid_file_resumes_in_the_hf_cache(client, tmp_path, capsys):
    from huggingface_hub import constants

    repo = client.repos[("model", STREETCLIP_ID)]
    name = "model.safetensors"
    blobs = Path(constants.HF_HUB_CACHE) / "models--geolocal--StreetCLIP" / "blobs"
    blobs.mkdir(parents=True)
    kept = len(repo.files[name]) // 3
    (blobs / f"{repo.etags[name]}.partial").write_bytes(repo.files[name][:kept])  # what a killed run left
    assert cli_main(["download", "model", "streetclip", "--no-progress"]) == 0
    assert "already in partial files (resumed)" in capsys.readouterr().out
    gets = [r for r in client.file_gets() if r[1].endswith(name)]
    assert [_range_start(r) for r in gets] == [kept]
    from geosolver.hub import cached_model

    snap = cached_model(STREETCLIP_ID)
    assert snap is not None and (snap / name).read_bytes() == repo.files[name]
    assert (snap / name).is_symlink() and not list(blobs.glob("*.partial"))


def test_checksums_are_the_hubs_forms_sha256_for_lfs_and_the_git_blob_sha1_otherwise(tmp_path):
    from geosolver.hub import _tree_files
    from geosolver.hubhttp import file_checksum

    p = tmp_path / "hello.txt"
    p.write_bytes(b"hello\n")
    # `git hash-object hello.txt` and `sha256sum hello.txt`
    assert file_checksum(p, "0" * 40) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert file_checksum(p, "0" * 64) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    page = [{"type": "file", "path": "README.md", "size": 6, "oid": "ce013625030ba8dba906f756967f9e9ca394464a"},
            {"type": "file", "path": "a.zip", "size": 6, "oid": "1" * 40, "lfs": {"oid": "2" * 64, "size": 6}},
            {"type": "directory", "path": "images", "oid": "3" * 40, "size": 0}]
    assert [(f.path, f.etag) for f in _tree_files(page, "x")] == [
        ("README.md", "ce013625030ba8dba906f756967f9e9ca394464a"), ("a.zip", "2" * 64)]
