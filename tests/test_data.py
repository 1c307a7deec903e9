"""Tests of geosolver.data: every reader against miniature datasets whose truth is built independently
(tests/helpers_data.py)."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers_data import (
    OSV5M_COLUMNS,
    assert_color,
    make_exif_photos,
    make_folder_dataset,
    make_jpeg,
    make_osv5m_tree,
    make_webdataset,
)

from geosolver.data import DATASET_KINDS, DatasetError, read_dataset
from geosolver.errors import GeosolverError
from geosolver.images import ImageReadError, open_image, read_bytes, tar_source

JPEG_TOL = 4  # levels: a solid-colour JPEG at quality 95 decodes within a few levels


def skipped_of(table: pd.DataFrame) -> dict[str, str]:
    s = table.attrs["skipped"]
    assert list(s.columns) == ["id", "reason"]
    return dict(zip(s["id"], s["reason"]))


# ----------------------------------------------------------------------------------------- OSV5M


@pytest.fixture()
def osv5m(tmp_path):
    truth = make_osv5m_tree(tmp_path / "osv5m", n_rows=9, split="test", n_zips=2, extracted=True)
    return tmp_path / "osv5m", truth


def test_osv5m_mixed_zips_and_folder(osv5m):
    root, truth = osv5m
    table = read_dataset("osv5m", root, split="test")

    usable = truth[(truth["stored"] != "missing") & truth["latitude"].notna()]
    assert list(table.columns) == ["id", "source", "lat", "lon"] + OSV5M_COLUMNS[3:]
    assert table["id"].tolist() == [str(i) for i in usable["id"]]  # CSV order, ints as exact strings
    assert set(map(type, table["id"])) == {str}
    np.testing.assert_allclose(table["lat"].to_numpy(), usable["latitude"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(table["lon"].to_numpy(), usable["longitude"].to_numpy(), atol=1e-9)
    assert (table["lat"] < 0).any() and (table["lon"] < 0).any()  # south / west keep their sign
    assert table["lat"].dtype == np.float64 and table["lon"].dtype == np.float64

    # Every metadata column passes through unchanged (Namibia's "NA" stays a string).
    for col in OSV5M_COLUMNS[3:]:
        got, exp = table[col].tolist(), usable[col].tolist()
        if isinstance(exp[0], str):
            assert got == exp, col
        else:
            np.testing.assert_allclose(np.asarray(got, float), np.asarray(exp, float), err_msg=col)
    assert "NA" in table["country"].tolist()

    # Sources: zip members read in place, extracted files by path; each decodes to its own image.
    for row, (_, t) in zip(table.itertuples(), usable.iterrows()):
        if t["stored"] == "folder":
            assert row.source == str(root / "images" / "test" / t["member"])
        else:
            assert row.source == f"zip://{root / 'images' / 'test' / t['stored']}::{t['member']}"
        assert_color(open_image(row.source), t["color"], JPEG_TOL)

    missing_id = str(truth.loc[truth["stored"] == "missing", "id"].iloc[0])
    nan_id = str(truth.loc[truth["latitude"].isna(), "id"].iloc[0])
    skipped = skipped_of(table)
    assert skipped.keys() == {missing_id, nan_id}
    assert skipped[missing_id] == "image not found"
    assert "latitude" in skipped[nan_id] and "invalid coordinates" in skipped[nan_id]
    info = table.attrs["dataset"]
    assert info["kind"] == "osv5m" and info["split"] == "test" and info["csv"] == str(root / "test.csv")


def test_osv5m_extracted_copy_wins_and_limit(osv5m):
    root, truth = osv5m
    # Extract one zip member as well: the same id is then in a zip and in a folder.
    t0 = truth.iloc[0]
    dest = root / "images" / "test" / "99" / f"{t0['id']}.jpg"
    dest.parent.mkdir()
    with zipfile.ZipFile(root / "images" / "test" / t0["stored"]) as zf:
        dest.write_bytes(zf.read(t0["member"]))
    table = read_dataset("osv5m", root, split="test", limit=3)
    assert table["id"].tolist() == [str(i) for i in truth["id"][:3]]
    assert table["source"].iloc[0] == str(dest)
    assert len(table.attrs["skipped"]) == 0  # the bad rows come after the cut


def test_osv5m_split_choice_and_errors(tmp_path):
    root = tmp_path / "osv"
    train = make_osv5m_tree(root, n_rows=4, split="train", missing_image=(), nan_latitude=())
    make_osv5m_tree(root, n_rows=3, split="test", missing_image=(), nan_latitude=())
    with pytest.raises(DatasetError, match="both train.csv and test.csv"):
        read_dataset("osv5m", root)
    table = read_dataset("osv5m", root, split="train")
    assert table["id"].tolist() == [str(i) for i in train["id"]]
    with pytest.raises(DatasetError, match="val"):
        read_dataset("osv5m", root, split="val")
    (root / "images" / "test").rename(root / "images" / "elsewhere")
    with pytest.raises(DatasetError, match="no image directory"):
        read_dataset("osv5m", root, split="test")

    # A CSV without a longitude column names the file and lists the columns it has.
    bad = tmp_path / "bad.csv"
    pd.read_csv(root / "train.csv").drop(columns=["longitude"]).to_csv(bad, index=False)
    with pytest.raises(DatasetError) as e:
        read_dataset("osv5m", root, split="train", csv=bad)
    assert "longitude" in str(e.value) and str(bad) in str(e.value) and "thumb_original_url" in str(e.value)
    assert isinstance(e.value, GeosolverError)


# ------------------------------------------------------------------------------------ folder+CSV


def test_folder_latitude_longitude_by_path(tmp_path):
    truth = make_folder_dataset(tmp_path / "imgs", n=6, lat_name="latitude", lon_name="longitude", by="path",
                                missing_image=[3])
    table = read_dataset("folder", tmp_path / "imgs")
    ok = truth.drop(index=3)
    assert list(table.columns) == ["id", "source", "lat", "lon", "label", "score", "country"]
    assert table["id"].tolist() == ok["id"].tolist()  # ids = file stems
    assert table["source"].tolist() == ok["file"].tolist()
    np.testing.assert_allclose(table["lat"], ok["latitude"])
    np.testing.assert_allclose(table["lon"], ok["longitude"])
    assert table["label"].tolist() == ok["label"].tolist()
    np.testing.assert_allclose(table["score"], ok["score"])
    assert table["country"].tolist() == ok["country"].tolist()
    for row, color in zip(table.itertuples(), ok["color"]):
        assert_color(open_image(row.source), color, 0)  # PNG: pixel-equal
    assert skipped_of(table) == {truth["id"][3]: "image not found"}


def test_folder_lat_lng_by_id_case_insensitive(tmp_path):
    truth = make_folder_dataset(tmp_path / "imgs", n=5, lat_name="LAT", lon_name="Lng", by="id", csv_name="labels.csv",
                                fmt=".jpg")
    with pytest.raises(DatasetError, match="metadata.csv"):  # no default CSV: say what was looked for
        read_dataset("folder", tmp_path / "imgs")
    table = read_dataset("folder", tmp_path / "imgs", csv=tmp_path / "imgs" / "labels.csv")
    assert table["id"].tolist() == truth["id"].tolist()
    assert table["source"].tolist() == truth["file"].tolist()  # found by walking (some in sub-folders)
    np.testing.assert_allclose(table["lat"], truth["LAT"])
    np.testing.assert_allclose(table["lon"], truth["Lng"])
    assert (table["lon"] < 0).any() and (table["lat"] < 0).any()
    for row, color in zip(table.itertuples(), truth["color"]):
        assert_color(open_image(row.source), color, JPEG_TOL)


def test_folder_absolute_paths_bad_values_and_duplicates(tmp_path):
    imgs = tmp_path / "imgs"
    truth = make_folder_dataset(imgs, n=4, by="path", absolute_paths=True, csv_name=None)
    rows = truth.drop(columns=["id", "file", "color"]).copy()
    rows = pd.concat([rows, rows.iloc[[0]]], ignore_index=True)  # row 4 repeats row 0's image
    rows["latitude"] = rows["latitude"].astype(object)
    rows.loc[1, "latitude"] = "north"  # not a number
    rows.loc[2, "longitude"] = -200.0  # out of range
    rows.loc[3, "longitude"] = 180.0  # the antimeridian is valid
    csv = tmp_path / "elsewhere" / "meta.csv"
    csv.parent.mkdir()
    rows.to_csv(csv, index=False)
    table = read_dataset("folder", imgs, csv=csv)
    assert table["id"].tolist() == [truth["id"][0], truth["id"][3]]
    assert table["lon"].tolist()[1] == 180.0
    s = table.attrs["skipped"]
    assert s["id"].tolist() == [truth["id"][1], truth["id"][2], truth["id"][0]]
    reasons = s["reason"].tolist()
    assert "latitude 'north'" in reasons[0]
    assert "longitude -200.0 out of range" in reasons[1]
    assert reasons[2] == "duplicate id"


def test_folder_csv_without_coordinates_or_images(tmp_path):
    make_folder_dataset(tmp_path, n=2, by="path")
    pd.DataFrame({"path": ["img_000.png"], "y": [1.0], "x": [2.0]}).to_csv(tmp_path / "nocoord.csv", index=False)
    with pytest.raises(DatasetError) as e:
        read_dataset("folder", tmp_path, csv=tmp_path / "nocoord.csv")
    msg = str(e.value)
    assert "nocoord.csv" in msg and "latitude" in msg and "['path', 'y', 'x']" in msg
    pd.DataFrame({"name": ["a"], "lat": [1.0], "lon": [2.0]}).to_csv(tmp_path / "noimg.csv", index=False)
    with pytest.raises(DatasetError, match="no column naming the images"):
        read_dataset("folder", tmp_path, csv=tmp_path / "noimg.csv")
    pd.DataFrame({"path": ["gone.png"], "lat": [1.0], "lon": [2.0]}).to_csv(tmp_path / "gone.csv", index=False)
    with pytest.raises(DatasetError, match="no usable rows"):
        read_dataset("folder", tmp_path, csv=tmp_path / "gone.csv")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset("folder", tmp_path, csv=tmp_path / "absent.csv")


# ------------------------------------------------------------------------------------------- EXIF


def test_exif_reader(tmp_path, caplog):
    truth = make_exif_photos(tmp_path / "photos", n_gps=4, n_without=1)
    with caplog.at_level(logging.WARNING, logger="geosolver.data"):
        table = read_dataset("exif", tmp_path / "photos")
    gps = truth[truth["has_gps"]].set_index("id")
    assert sorted(table["id"]) == sorted(gps.index)
    assert list(table.columns[:4]) == ["id", "source", "lat", "lon"]
    t = gps.loc[table["id"]]
    # DMS rationals with denominators up to 10^4 s: well below 1e-6 degrees.
    np.testing.assert_allclose(table["lat"], t["lat"], atol=1e-6)
    np.testing.assert_allclose(table["lon"], t["lon"], atol=1e-6)
    assert (np.sign(table["lat"].to_numpy()) == np.sign(t["lat"].to_numpy())).all() and (table["lon"] < 0).any() and (table["lat"] < 0).any()
    assert table["camera_model"].tolist() == t["camera_model"].tolist()
    assert table["captured_at"].tolist() == t["captured_at"].tolist()
    for row, color in zip(table.itertuples(), t["color"]):
        assert row.source == str(tmp_path / "photos" / row.id)
        assert_color(open_image(row.source), color, 0 if row.id.endswith(".png") else JPEG_TOL)
    no_gps = truth.loc[~truth["has_gps"], "id"].tolist()
    assert skipped_of(table) == {no_gps[0]: "no EXIF GPS"}
    assert any("1 of 5 photo(s) have no EXIF GPS" in r.getMessage() for r in caplog.records)


def test_exif_reader_never_decodes_pixels(tmp_path, monkeypatch):
    make_exif_photos(tmp_path, n_gps=3, n_without=0, size=(64, 48))
    from PIL import ImageFile

    def boom(self, *a, **k):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    table = read_dataset("exif", tmp_path, limit=2)
    assert len(table) == 2


def test_exif_unreadable_file_is_skipped(tmp_path):
    make_jpeg(tmp_path / "good.jpg", color=(10, 20, 30), exif_gps=(-33.5, -70.25))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    table = read_dataset("exif", tmp_path)
    assert table["id"].tolist() == ["good.jpg"]
    assert table["lat"].iloc[0] == pytest.approx(-33.5) and table["lon"].iloc[0] == pytest.approx(-70.25)
    assert skipped_of(table)["broken.jpg"].startswith("unreadable image")


# ------------------------------------------------------------------------------------- webdataset


def test_webdataset_single_shard(tmp_path):
    truth = make_webdataset(tmp_path / "wds" / "shard-000000.tar", n=5, orphan_image=True)
    table = read_dataset("webdataset", tmp_path / "wds")
    ok = truth[truth["has_json"]]
    assert list(table.columns) == ["id", "source", "lat", "lon", "country", "tags", "shard", "key"]
    assert table["id"].tolist() == ok["id"].tolist()
    np.testing.assert_allclose(table["lat"], ok["lat"])
    np.testing.assert_allclose(table["lon"], ok["lon"])
    assert table["country"].tolist() == ok["country"].tolist()
    assert [json.loads(t) for t in table["tags"]] == ok["tags"].tolist()
    for row, (_, t) in zip(table.itertuples(), ok.iterrows()):
        assert row.source == tar_source(tmp_path / "wds" / "shard-000000.tar", t["member"])
        assert_color(open_image(row.source), t["color"], JPEG_TOL)
    orphan = truth.loc[~truth["has_json"], "key"].iloc[0]
    assert skipped_of(table) == {orphan: "no .json in sample"}


def test_webdataset_glob_brace_limit_and_spellings(tmp_path):
    a = make_webdataset(tmp_path / "train-000000.tar", n=3, lat_key="Latitude", lon_key="lng", with_id=False,
                        orphan_image=False, start=0)
    b = make_webdataset(tmp_path / "train-000001.tar", n=3, lat_key="Latitude", lon_key="lng", with_id=False,
                        orphan_image=False, start=3)
    both = pd.concat([a, b], ignore_index=True)
    for spec in (str(tmp_path / "train-*.tar"), str(tmp_path / "train-{000000..000001}.tar")):
        table = read_dataset("webdataset", spec)
        assert table["id"].tolist() == both["key"].tolist()  # no id in the JSON: the key
        np.testing.assert_allclose(table["lat"], both["lat"])
        np.testing.assert_allclose(table["lon"], both["lon"])
    table = read_dataset("webdataset", tmp_path, limit=2)
    assert table["id"].tolist() == a["key"][:2].tolist()
    assert table.attrs["dataset"]["shards"] == 2
    with pytest.raises(DatasetError, match="no .tar shards"):
        read_dataset("webdataset", str(tmp_path / "val-*.tar"))


def test_webdataset_json_without_coordinates(tmp_path):
    p = tmp_path / "s.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (("k1.jpg", b"x"), ("k1.json", json.dumps({"x": 1, "country": "FR"}).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(DatasetError) as e:
        read_dataset("webdataset", p)
    assert "latitude" in str(e.value) and "['x', 'country']" in str(e.value)


def _decode_colors(sources):
    from geosolver.images import open_image as oi

    return [tuple(int(v) for v in np.asarray(oi(s)).reshape(-1, 3).mean(0).round()) for s in sources]


def test_tar_source_read_bytes_errors_and_fork(tmp_path):
    truth = make_webdataset(tmp_path / "s.tar", n=3, orphan_image=False)
    src = tar_source(tmp_path / "s.tar", truth["member"][1])
    with tarfile.open(tmp_path / "s.tar") as tf:
        assert read_bytes(src) == tf.extractfile(truth["member"][1]).read()
    with pytest.raises(ImageReadError, match="nope.jpg"):
        read_bytes(tar_source(tmp_path / "s.tar", "nope.jpg"))
    with pytest.raises(ImageReadError):
        read_bytes(tar_source(tmp_path / "absent.tar", "a.jpg"))
    # A forked worker must not reuse the parent's cached descriptor state.
    sources = [tar_source(tmp_path / "s.tar", m) for m in truth["member"]]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_decode_colors, (sources,))
    for g, c in zip(got, truth["color"]):
        assert max(abs(x - y) for x, y in zip(g, c)) <= JPEG_TOL


# ------------------------------------------------------------------------------------ read_dataset


def test_read_dataset_kinds_and_cli(tmp_path, capsys):
    assert set(DATASET_KINDS) == {"osv5m", "folder", "exif", "webdataset"}
    with pytest.raises(DatasetError, match="unknown dataset kind 'coco'"):
        read_dataset("coco", tmp_path)
    with pytest.raises(DatasetError, match="no image files"):
        read_dataset("exif", tmp_path)
    make_folder_dataset(tmp_path / "imgs", n=3)
    from geosolver.data.__main__ import main

    assert main(["--dataset", "folder", "--root", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")]) == 0
    assert "3 usable rows, 0 skipped" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dataset"]["kind"] == "folder" and cfg["dataset"]["rows"] == 3
    assert pd.read_parquet(tmp_path / "out" / "table.parquet")["id"].tolist() == ["img_000", "img_001", "img_002"]
    assert main(["--dataset", "folder", "--root", str(tmp_path / "nowhere")]) == 2
    assert cfg["command"] == "geosolver.data" and "geosolver_version" in cfg
    (tmp_path / "a-file").write_text("")
    assert main(["--dataset", "folder", "--root", str(tmp_path / "imgs"), "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("zip64", [False, True])
def test_zip_member_names_matches_zipfile(tmp_path, monkeypatch, zip64):
    from geosolver.data.osv5m import fast_zip_names, zip_member_names

    if zip64:  # make zipfile write the zip64 end records without 65 536 members
        monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    p = tmp_path / "a.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.comment = b"a comment"
        zf.writestr("sub/", b"")
        zf.writestr("sub/1.jpg", b"x" * 10)
        zf.writestr("2.jpg", b"y")
        zf.writestr("Zürich/ß.jpg", b"z")  # non-ASCII: UTF-8 flagged
    with zipfile.ZipFile(p) as zf:
        expected = zf.namelist()
    assert zip_member_names(p) == expected == ["sub/", "sub/1.jpg", "2.jpg", "Zürich/ß.jpg"]
    assert fast_zip_names(p) == expected  # the fast parser itself, not its zipfile fallback
    (tmp_path / "b.zip").write_bytes(b"garbage")
    with pytest.raises(zipfile.BadZipFile):
        zip_member_names(tmp_path / "b.zip")


def test_relative_root_gives_absolute_sources(tmp_path, monkeypatch):
    truth = make_folder_dataset(tmp_path / "imgs", n=2)
    make_webdataset(tmp_path / "wds" / "a.tar", n=2, orphan_image=False)
    monkeypatch.chdir(tmp_path)
    assert read_dataset("folder", "imgs")["source"].tolist() == truth["file"].tolist()
    src = read_dataset("webdataset", "wds/*.tar")["source"].iloc[0]
    assert src.startswith(f"tar://{tmp_path}/wds/a.tar::")
    monkeypatch.chdir("/")
    assert open_image(src).size == (20, 12)  # still readable from elsewhere


# ------------------------------------------------------------------------ symlink loops, encodings


def _walk_in_thread(fn, timeout=60):
    """Run ``fn`` in a daemon thread; fail (instead of hanging) when it does not finish in time."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "reader did not finish: endless walk over a symlink loop?"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("loop", ["sub/up->..", "loop->root"])
def test_folder_id_csv_over_symlink_loop(tmp_path, caplog, loop):
    truth = make_folder_dataset(tmp_path / "imgs", n=4, by="id", fmt=".png")  # images in imgs/ and imgs/sub1/
    imgs = tmp_path / "imgs"
    if loop == "sub/up->..":
        (imgs / "sub1" / "up").symlink_to("..", target_is_directory=True)
        link = "sub1/up"
    else:
        (imgs / "loop").symlink_to(imgs, target_is_directory=True)
        link = "loop"
    with caplog.at_level(logging.WARNING, logger="geosolver.data"):
        table = _walk_in_thread(lambda: read_dataset("folder", imgs))
    assert table["id"].tolist() == truth["id"].tolist()
    assert table["source"].tolist() == truth["file"].tolist()  # the real paths, not ones through the link
    reasons = skipped_of(table)
    assert reasons.keys() == {link} and "symlink loop" in reasons[link]
    assert any("symlink loop" in r.getMessage() and link in r.getMessage() for r in caplog.records)


def test_exif_reader_over_symlink_loop(tmp_path):
    make_jpeg(tmp_path / "a.jpg", exif_gps=(10.5, 20.25))
    make_jpeg(tmp_path / "sub" / "b.jpg", exif_gps=(-10.5, -20.25))
    (tmp_path / "sub" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")  # a file symlink pointing at itself
    table = _walk_in_thread(lambda: read_dataset("exif", tmp_path))
    assert table["id"].tolist() == ["a.jpg", "sub/b.jpg"]
    reasons = skipped_of(table)
    assert "symlink loop" in reasons["sub/up"]
    assert "self.jpg" in reasons  # unreadable (ELOOP), skipped with a reason, no crash


def _write_latin1_folder(root: Path, header_city: str = "city") -> Path:
    make_jpeg(root / "a.png", color=(1, 2, 3))
    make_jpeg(root / "b.png", color=(4, 5, 6))
    text = f"id,lat,lon,{header_city},note\na,47.37,8.54,Zürich,café crème\nb,-23.55,-46.63,São Paulo,€5 – ok\n"
    (root / "metadata.csv").write_bytes(text.encode("cp1252"))
    return root / "metadata.csv"


def test_folder_latin1_csv_decoded_to_str(tmp_path, caplog):
    csv = _write_latin1_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="geosolver.data"):
        table = read_dataset("folder", tmp_path)
    assert table["city"].tolist() == ["Zürich", "São Paulo"]
    assert table["note"].tolist() == ["café crème", "€5 – ok"]  # cp1252-only characters too
    assert all(type(v) is str for col in ("id", "source", "city", "note") for v in table[col])
    msgs = [r.getMessage() for r in caplog.records]
    assert any(str(csv) in m and "cp1252" in m for m in msgs), msgs
    # The grouping the curate commands do must work on it (it used to die on bytes).
    assert table.groupby("city").size().to_dict() == {"São Paulo": 1, "Zürich": 1}


def test_csv_latin1_header_latin1_fallback_and_utf8_bom(tmp_path, caplog):
    from geosolver.data.common import read_csv

    _write_latin1_folder(tmp_path / "h", header_city="Stadt_ß")  # a non-UTF-8 column name
    table = read_dataset("folder", tmp_path / "h")
    assert "Stadt_ß" in table.columns and table["Stadt_ß"].tolist() == ["Zürich", "São Paulo"]
    # Bytes cp1252 leaves undefined (0x81, 0x8d) fall through to latin-1.
    (tmp_path / "l1.csv").write_bytes(b"id,c\n1,\x81\xe9\x8d\n")
    with caplog.at_level(logging.WARNING, logger="geosolver.data"):
        df = read_csv(tmp_path / "l1.csv")
    assert df["c"].tolist() == ["\x81é\x8d"]
    assert any("latin-1" in r.getMessage() and "l1.csv" in r.getMessage() for r in caplog.records)
    # UTF-8 with a byte-order mark: the first column name carries no BOM, nothing is logged.
    caplog.clear()
    (tmp_path / "bom.csv").write_bytes("\ufeffid,city\n1,Zürich\n".encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="geosolver.data"):
        df = read_csv(tmp_path / "bom.csv", ["id"])
    assert list(df.columns) == ["id", "city"] and df["city"].tolist() == ["Zürich"] and df["id"].tolist() == ["1"]
    assert not caplog.records
    # UTF-16 with its byte-order mark (Excel's "Unicode text").
    (tmp_path / "u16.csv").write_bytes("id,city\n1,Zürich\n2,東京\n".encode("utf-16"))
    assert read_csv(tmp_path / "u16.csv", ["id"])["city"].tolist() == ["Zürich", "東京"]
