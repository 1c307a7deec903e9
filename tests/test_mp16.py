"""mp16: the MP-16 coordinates read out of the GeoCLIP wheel (offline: a fake wheel; online only on request)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from geosolver import mp16


def _fake_wheel(folder, rows: str, member: str = mp16.CSV_MEMBER):
    folder.mkdir(parents=True, exist_ok=True)
    w = folder / mp16.WHEEL_NAME
    with zipfile.ZipFile(w, "w") as z:
        z.writestr("geoclip/__init__.py", "")
        z.writestr(member, rows)
    return w


GOOD = "LAT,LON\n-50.943392,-72.935664\n34.201047,-118.599931\n48.85,2.35\n"


def test_parse_reads_the_csv_inside_the_wheel(tmp_path):
    coords, skipped = mp16.parse_wheel(_fake_wheel(tmp_path, GOOD))
    assert coords.dtype == np.float64 and coords.shape == (3, 2) and skipped == 0
    np.testing.assert_allclose(coords[0], [-50.943392, -72.935664])


def test_missing_values_are_skipped_out_of_range_is_an_error(tmp_path):
    coords, skipped = mp16.parse_wheel(_fake_wheel(tmp_path / "a", GOOD + "nan,3.0\n,4\n10.0,x\n"))
    assert coords.shape == (3, 2) and skipped == 3
    with pytest.raises(mp16.MP16Error, match="invalid"):
        mp16.parse_wheel(_fake_wheel(tmp_path / "b", GOOD + "95.0,10.0\n"))
    with pytest.raises(mp16.MP16Error, match="no geoclip/model"):
        mp16.parse_wheel(_fake_wheel(tmp_path / "c", GOOD, member="other.csv"))
    with pytest.raises(mp16.MP16Error, match="LAT/LON"):
        mp16.parse_wheel(_fake_wheel(tmp_path / "d", "x,y\n1,2\n"))
    (tmp_path / "e.whl").write_text("not a zip")
    with pytest.raises(mp16.MP16Error, match="not a readable wheel"):
        mp16.parse_wheel(tmp_path / "e.whl")


def test_download_parse_cache_then_offline(tmp_path, monkeypatch):
    calls = []

    def fake_download(dest):
        calls.append(dest)
        return _fake_wheel(dest, GOOD)

    monkeypatch.setattr(mp16, "download_wheel", fake_download)
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    a = mp16.load_coordinates()
    assert calls == [tmp_path / "cache" / "mp16"] and a.shape == (3, 2)
    assert mp16.cached_npy_path().exists()
    # second call: from the .npy, no download, and the wheel is not even needed
    (tmp_path / "cache" / "mp16" / mp16.WHEEL_NAME).unlink()
    np.testing.assert_array_equal(mp16.load_coordinates(download=False), a)
    assert len(calls) == 1
    # no cache, no wheel, no download: one clear error
    with pytest.raises(mp16.MP16Error, match="download=False"):
        mp16.load_coordinates(cache=tmp_path / "empty", download=False)


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    import subprocess

    class P:
        returncode = 1
        stdout = ""
        stderr = "Looking in indexes\nERROR: Could not find a version that satisfies the requirement geoclip==1.3.0\n"

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: P())
    with pytest.raises(mp16.MP16Error) as e:
        mp16.load_coordinates(cache=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "Could not find a version" in msg and mp16.WHEEL_NAME in msg
    assert isinstance(e.value, mp16.GeosolverError)


@pytest.mark.skipif(os.environ.get("GEOSOLVER_NETWORK_TESTS") != "1", reason="set GEOSOLVER_NETWORK_TESTS=1 to download the real wheel")
def test_real_download(tmp_path):
    coords = mp16.load_coordinates(cache=tmp_path)
    assert coords.shape == (100_000, 2)
    assert (tmp_path / mp16.WHEEL_NAME).exists() and mp16.cached_npy_path(tmp_path).exists()
    assert -90 <= coords[:, 0].min() and coords[:, 0].max() <= 90
    # MP-16 is photo-dense in Europe / North America
    eu = (coords[:, 0] > 35) & (coords[:, 0] < 72) & (coords[:, 1] > -11) & (coords[:, 1] < 40)
    assert 0.2 < eu.mean() < 0.6
