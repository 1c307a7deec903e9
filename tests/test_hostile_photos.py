"""Hostile photos: no photo is read past the per-photo cap (files, zip and tar members, bytes);
a path that is not a regular file (FIFO, /dev/zero, a directory) is refused before it is opened;
`locate` says so in one line with exit code 2, `embed` records the row in failures.parquet and
goes on; `locate` checks its photos and gallery before it loads the model or builds the index."""

import io
import os
import tarfile
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest

from geosolver.cli import main as cli_main
from geosolver.errors import ImageReadError, PhotoTooLarge
from geosolver.images import MAX_PHOTO_ENV, max_photo_bytes, read_photo_bytes, tar_source, zip_source
from geosolver.store import EmbeddingStore, write_store
from helpers_data import encode_image, make_folder_dataset

MB = 1 << 20


@pytest.fixture
def gallery(tmp_path):
    from geosolver.encoders import load_encoder

    enc = load_encoder("histogram")
    meta = pd.DataFrame({"id": ["a", "b", "c"], "lat": [0.0, 10.0, 20.0], "lon": [0.0, 10.0, 20.0]})
    write_store(tmp_path / "g", np.random.default_rng(0).standard_normal((3, enc.dim)).astype(np.float32), meta, enc.identity())
    return str(tmp_path / "g")


def _zip_bomb(path, member_bytes: int) -> str:
    """A zip whose one member inflates to ``member_bytes`` zeros (a few KB on disk per MB)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("big.jpg", "w", force_zip64=True) as f:
        block = b"\0" * MB
        for _ in range(member_bytes // MB):
            f.write(block)
    return zip_source(path, "big.jpg")


def test_default_cap_is_64_mb_and_the_environment_sets_it(monkeypatch):
    monkeypatch.delenv(MAX_PHOTO_ENV, raising=False)
    assert max_photo_bytes() == 64 * MB
    monkeypatch.setenv(MAX_PHOTO_ENV, "0.5")
    assert max_photo_bytes() == MB // 2


def test_a_file_over_the_cap_is_refused_and_one_at_the_cap_is_read(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"x" * 1001)
    (tmp_path / "ok.jpg").write_bytes(b"x" * 1000)
    with pytest.raises(PhotoTooLarge, match="big.jpg is 1001 bytes, over the"):
        read_photo_bytes(tmp_path / "big.jpg", max_bytes=1000)
    assert len(read_photo_bytes(tmp_path / "ok.jpg", max_bytes=1000)) == 1000
    with pytest.raises(PhotoTooLarge):
        read_photo_bytes(b"x" * 1001, max_bytes=1000)


def test_a_zip_bomb_member_stops_at_the_cap_without_inflating(tmp_path):
    src = _zip_bomb(tmp_path / "bomb.zip", 40 * MB)
    assert (tmp_path / "bomb.zip").stat().st_size < MB
    with pytest.raises(PhotoTooLarge, match="41943040 bytes"):  # the declared size, refused before inflating
        read_photo_bytes(src, max_bytes=4 * MB)


def test_a_zip_member_that_lies_about_its_size_stops_at_the_cap(tmp_path, monkeypatch):
    src = _zip_bomb(tmp_path / "bomb.zip", 8 * MB)
    real = zipfile.ZipFile.getinfo

    def lying(self, name):  # a crafted central directory: declares 100 bytes
        info = real(self, name)
        info.file_size = 100
        return info

    monkeypatch.setattr(zipfile.ZipFile, "getinfo", lying)
    with pytest.raises((PhotoTooLarge, ImageReadError)):
        read_photo_bytes(src, max_bytes=2 * MB)


def test_a_tar_member_over_the_cap_is_refused_before_it_is_read(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        data = b"y" * 5000
        info = tarfile.TarInfo("000.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(PhotoTooLarge, match="5000 bytes"):
        read_photo_bytes(tar_source(tmp_path / "s.tar", "000.jpg"), max_bytes=4999)
    assert read_photo_bytes(tar_source(tmp_path / "s.tar", "000.jpg"), max_bytes=5000) == data


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_non_regular_files_are_refused_before_they_are_opened(kind, tmp_path):
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)
    else:
        path = "/dev/zero" if kind == "dev-zero" else tmp_path
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("e", pytest.raises(ImageReadError, read_photo_bytes, path)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a non-regular file hung"
    assert "not a photo file" in str(result["e"].value)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "too-large"])
def test_locate_refuses_the_photo_in_one_line_before_building_the_index(kind, gallery, tmp_path, capsys, monkeypatch):
    import geosolver.locate as locate_mod

    monkeypatch.setattr(locate_mod.Geolocator, "from_store",
                        classmethod(lambda *a, **k: pytest.fail("built the index before checking the photo")))
    if kind == "fifo":
        os.mkfifo(tmp_path / "p.jpg")
        photo, extra = str(tmp_path / "p.jpg"), []
    elif kind == "too-large":
        (tmp_path / "p.jpg").write_bytes(encode_image((64, 64), (1, 2, 3)) + b"\0" * (MB // 2))
        photo, extra = str(tmp_path / "p.jpg"), ["--max-photo-mb", "0.25"]
    else:
        photo, extra = "/dev/zero", []
    monkeypatch.setenv(MAX_PHOTO_ENV, "64")  # the CLI sets it from --max-photo-mb; restored after the test
    rc = cli_main(["locate", photo, "--gallery", gallery, "--model", "histogram", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("over the 0.25 MB per-photo cap" if kind == "too-large" else "not a photo file") in err


def test_locate_names_a_gallery_that_does_not_exist(tmp_path, capsys):
    (tmp_path / "p.jpg").write_bytes(encode_image((16, 16), (1, 2, 3)))
    assert cli_main(["locate", str(tmp_path / "p.jpg"), "--gallery", str(tmp_path / "nope"), "--model", "histogram"]) == 2
    err = capsys.readouterr().err
    assert "nope does not exist" in err and "not an embedding store" not in err


def test_embed_records_an_oversized_photo_as_a_failure_skips_a_fifo_and_goes_on(tmp_path, monkeypatch):
    df = make_folder_dataset(tmp_path / "data", n=5, size=(16, 16))
    big = df["file"][2]
    with open(big, "ab") as f:
        f.write(b"\0" * MB)  # a valid image followed by 1 MB of padding
    os.unlink(df["file"][4])
    os.mkfifo(df["file"][4])  # would hang a plain open()
    monkeypatch.setenv(MAX_PHOTO_ENV, "64")
    rc = cli_main(["embed", "--root", str(tmp_path / "data"), "--model", "histogram", "--out", str(tmp_path / "s"),
                   "--no-progress", "--num-workers", "0", "--max-photo-mb", "0.5"])
    assert rc == 0
    st = EmbeddingStore(tmp_path / "s")
    assert len(st) == 3 and sorted(st.metadata["id"]) == sorted(i for k, i in enumerate(df["id"]) if k not in (2, 4))
    f = st.failures
    assert list(f["id"]) == [df["id"][2]] and "PhotoTooLarge" in f["reason"][0]
    assert list(st.skipped["id"]) == [df["id"][4]]  # the folder reader keeps regular files only


def test_an_encrypted_zip_member_is_one_readable_error(tmp_path):
    with zipfile.ZipFile(tmp_path / "enc.zip", "w") as zf:
        zf.writestr("a.jpg", encode_image((8, 8), (1, 2, 3)))
    raw = bytearray((tmp_path / "enc.zip").read_bytes())
    raw[raw.find(b"PK\x03\x04") + 6] |= 1  # the "encrypted" flag, local header and central directory
    raw[raw.find(b"PK\x01\x02") + 8] |= 1
    (tmp_path / "enc.zip").write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="encrypted"):
        read_photo_bytes(zip_source(tmp_path / "enc.zip", "a.jpg"))
