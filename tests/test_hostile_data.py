"""Hostile inputs for every dataset reader: each either raises one :class:`DatasetError` /
:class:`CoordinateError` line naming the file and what is wrong, or (for per-row problems) skips the
row with a reason. Never a traceback from pyarrow, pandas or the OS."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from helpers_data import encode_image, make_jpeg

from geosolver.data import read_dataset
from geosolver.errors import CoordinateError, DatasetError

CSV_READERS = ("folder", "osv5m")


@pytest.fixture()
def roots(tmp_path):
    """A folder root and an OSV5M root, both holding images ``a`` and ``b`` (so one CSV fits both)."""
    folder = tmp_path / "folder"
    make_jpeg(folder / "a.jpg", color=(10, 20, 30))
    make_jpeg(folder / "b.jpg", color=(40, 50, 60))
    osv = tmp_path / "osv"
    make_jpeg(osv / "images" / "test" / "a.jpg", color=(10, 20, 30))
    make_jpeg(osv / "images" / "test" / "b.jpg", color=(40, 50, 60))
    return {"folder": folder, "osv5m": osv}


def _read(kind, roots, csv):
    return read_dataset(kind, roots[kind], split="test" if kind == "osv5m" else None, csv=csv)


def _junk(n=4096, seed=0) -> bytes:
    return random.Random(seed).randbytes(n)


# (name, CSV content (bytes) or a marker, error fragment)
WHOLE_FILE_CASES = [
    ("empty", b"", "empty"),
    ("blank_lines", b"\n\n  \n", "empty"),
    ("binary_junk", _junk(), "not a CSV"),
    ("binary_with_nul", b"id,latitude,longitude\n" + bytes(range(256)) * 8, "not a CSV"),
    ("zip_bytes", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + _junk(500, 1), "not a CSV"),
    ("missing_latitude", b"id,longitude\na,1.0\n", "no latitude column"),
    ("missing_longitude", b"id,latitude\na,1.0\n", "no longitude column"),
    ("header_only", b"id,latitude,longitude\n", "no usable rows"),
    ("all_rows_bad", b"id,latitude,longitude\na,nan,1\nb,95,1\n", "no usable rows"),
    ("ragged_rows", b"id,latitude,longitude\na,1,2\nb,3,4,5,6\n", "cannot read as CSV"),
    ("directory", "DIR", "is a directory"),
    ("absent", "ABSENT", "not found"),
]


@pytest.mark.parametrize("kind", CSV_READERS)
@pytest.mark.parametrize("name,content,fragment", WHOLE_FILE_CASES, ids=[c[0] for c in WHOLE_FILE_CASES])
def test_csv_readers_whole_file_problems(roots, tmp_path, kind, name, content, fragment):
    csv = tmp_path / f"{name}.csv"
    if content == "DIR":
        csv.mkdir()
    elif content != "ABSENT":
        csv.write_bytes(content)
    with pytest.raises(DatasetError) as e:
        _read(kind, roots, csv)
    msg = str(e.value)
    assert fragment in msg, msg
    assert str(csv) in msg, msg  # names the file
    assert "\n" not in msg and "\r" not in msg and len(msg) < 1000, msg  # one readable line
    assert msg.isprintable(), msg


# Per-row problems: the row is skipped with a reason, the good row stays.
ROW_CASES = [
    ("nan", "nan", "1.0", "latitude 'nan' missing or not a number"),
    ("empty_field", "", "1.0", "latitude (empty) missing or not a number"),
    ("inf", "2.0", "inf", "longitude 'inf' missing or not a number"),
    ("text", "north", "1.0", "latitude 'north' missing or not a number"),
    ("lat_out_of_range", "90.5", "1.0", "latitude 90.5 out of range"),
    ("lon_out_of_range", "1.0", "-180.000001", "longitude -180.000001 out of range"),
    ("both_bad", "-91", "181", "latitude -91.0 out of range; longitude 181.0 out of range"),
]


@pytest.mark.parametrize("kind", CSV_READERS)
@pytest.mark.parametrize("name,lat,lon,reason", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_csv_readers_bad_row_is_skipped(roots, tmp_path, kind, name, lat, lon, reason):
    csv = tmp_path / "rows.csv"
    csv.write_text(f"id,latitude,longitude\na,{lat},{lon}\nb,-33.5,151.25\n")
    table = _read(kind, roots, csv)
    assert table["id"].tolist() == ["b"] and table["lat"].tolist() == [-33.5]
    s = table.attrs["skipped"]
    assert s["id"].tolist() == ["a"]
    assert s["reason"].iloc[0] == f"invalid coordinates: {reason}"


@pytest.mark.parametrize("kind", CSV_READERS)
def test_csv_readers_duplicate_and_odd_column_names(roots, tmp_path, kind):
    """Repeated or blank header names do not crash: the first of a repeated name is used."""
    csv = tmp_path / "dups.csv"
    csv.write_text("id,latitude,longitude,latitude,,note,note\na,1.5,2.5,99,x,n1,n2\n")
    table = _read(kind, roots, csv)
    assert table["id"].tolist() == ["a"] and table["lat"].tolist() == [1.5] and table["lon"].tolist() == [2.5]
    assert len(set(table.columns)) == len(table.columns)


def test_folder_and_osv5m_root_problems(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for kind, fragment in (("folder", "not a directory"), ("osv5m", "not a directory")):
        for root in (tmp_path / "absent", tmp_path / "file.txt"):
            with pytest.raises(DatasetError, match=fragment) as e:
                read_dataset(kind, root, split="test" if kind == "osv5m" else None)
            assert str(root) in str(e.value)


# ------------------------------------------------------------------------ readers that take no CSV


@pytest.mark.parametrize("kind", ["exif", "webdataset"])
def test_csv_given_to_a_reader_without_csv(tmp_path, kind):
    (tmp_path / "m.csv").write_text("id,lat,lon\n")
    with pytest.raises(DatasetError, match="does not read a CSV"):
        read_dataset(kind, tmp_path, csv=tmp_path / "m.csv")


@pytest.mark.parametrize(
    "setup,fragment",
    [
        ("absent", "not a directory"),
        ("file", "not a directory"),
        ("no_images", "no image files found"),
        ("only_unreadable", "no usable rows"),
    ],
)
def test_exif_whole_folder_problems(tmp_path, setup, fragment):
    root = tmp_path / "photos"
    if setup == "file":
        root.write_bytes(b"x")
    elif setup == "no_images":
        root.mkdir()
        (root / "notes.txt").write_text("hi")
    elif setup == "only_unreadable":
        root.mkdir()
        (root / "a.jpg").write_bytes(_junk(100))
    with pytest.raises(DatasetError, match=fragment) as e:
        read_dataset("exif", root)
    assert str(root) in str(e.value) and "\n" not in str(e.value)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


JPG = encode_image((8, 8), (1, 2, 3))
WDS_ROW_CASES = [
    ("nan", b'{"lat": NaN, "lon": 1}', "invalid coordinates: latitude (empty) missing or not a number"),
    ("null", b'{"lat": null, "lon": 1}', "invalid coordinates: latitude (empty) missing or not a number"),
    ("out_of_range", b'{"lat": 1, "lon": 200}', "invalid coordinates: longitude 200.0 out of range"),
    ("string", b'{"lat": "x", "lon": 1}', "invalid coordinates: latitude 'x' missing or not a number"),
    ("missing_key", b'{"lon": 1}', "invalid coordinates: latitude (empty) missing or not a number"),
    ("not_json", b"\x00\xff{", "bad JSON in k0.json"),
    ("json_list", b"[1, 2]", "bad JSON in k0.json: expected a JSON object"),
]


@pytest.mark.parametrize("name,js,reason", WDS_ROW_CASES, ids=[c[0] for c in WDS_ROW_CASES])
def test_webdataset_bad_sample_is_skipped(tmp_path, name, js, reason):
    good = json.dumps({"lat": 5.5, "lon": -6.5}).encode()
    shard = _tar(tmp_path / "s.tar", {"k0.jpg": JPG, "k0.json": js, "k1.jpg": JPG, "k1.json": good})
    table = read_dataset("webdataset", shard)
    assert table["id"].tolist() == ["k1"] and table["lat"].tolist() == [5.5]
    s = table.attrs["skipped"]
    assert s["id"].tolist() == ["k0"] and s["reason"].iloc[0].startswith(reason), s["reason"].iloc[0]


@pytest.mark.parametrize(
    "setup,fragment",
    [
        ("junk_tar", "not an uncompressed tar file"),
        ("empty_tar_file", "not an uncompressed tar file"),
        ("gzip_tar", "not an uncompressed tar file"),
        ("no_shards", "no .tar shards"),
        ("absent", "no .tar shards"),
        ("no_coordinate_field", "no latitude field"),
        ("only_bad_samples", "no usable rows"),
    ],
)
def test_webdataset_whole_dataset_problems(tmp_path, setup, fragment):
    root = tmp_path / "s.tar"
    if setup == "junk_tar":
        root.write_bytes(_junk(3000))
    elif setup == "empty_tar_file":
        root.write_bytes(b"")
    elif setup == "gzip_tar":
        import gzip

        _tar(tmp_path / "plain.tar", {"k.jpg": JPG})
        root.write_bytes(gzip.compress((tmp_path / "plain.tar").read_bytes()))
    elif setup == "no_shards":
        root = tmp_path / "empty_dir"
        root.mkdir()
    elif setup == "absent":
        root = tmp_path / "nowhere"
    elif setup == "no_coordinate_field":
        _tar(root, {"k.jpg": JPG, "k.json": b'{"x": 1}'})
    elif setup == "only_bad_samples":
        _tar(root, {"k.jpg": JPG, "k.json": b'{"lat": 100, "lon": 1}'})
    with pytest.raises(DatasetError, match=fragment) as e:
        read_dataset("webdataset", root)
    assert str(root) in str(e.value) and "\n" not in str(e.value)


def test_coordinate_error_is_a_value_error():
    """Callers that catch ValueError keep working with CoordinateError (geo.validate_coords)."""
    from geosolver.geo import validate_coords

    with pytest.raises(CoordinateError, match="invalid value"):
        validate_coords([1.0, float("nan")], [2.0, 3.0], "points")
    assert issubclass(CoordinateError, ValueError)


def test_folder_without_a_known_csv_names_the_option_to_use(tmp_path, capsys):
    from geosolver.cli import main as cli_main

    (tmp_path / "labels_2024.csv").write_text("path,lat,lon\n")
    rc = cli_main(["embed", "--dataset", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "histogram"])
    err = capsys.readouterr().err
    assert rc == 2 and "labels_2024.csv" in err and "--csv FILE" in err and "csv=/--csv" not in err
    assert not (tmp_path / "o").exists()
