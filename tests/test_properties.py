"""Property-based tests (hypothesis): the geo math against its definitions and the ``haversine``
package, and the dataset readers against generated datasets and generated hostile CSV text."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers_data import encode_image

from geosolver.data import read_dataset
from geosolver.data.common import LAT_NAMES, LON_NAMES
from geosolver.errors import CoordinateError, DatasetError
from geosolver.geo import (
    EARTH_RADIUS_KM,
    GEOSCORE_MAX,
    geoscore,
    haversine,
    spherical_mean,
    validate_coords,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

lats = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lons = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
points = st.tuples(lats, lons)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM  # 20015.09 km


def hav(p, q) -> float:
    return float(haversine(p[0], p[1], q[0], q[1]))


# ------------------------------------------------------------------------------------------ geo


@FAST
@given(points, points)
def test_haversine_symmetric_bounded_and_zero_on_identity(p, q):
    d = hav(p, q)
    assert d == hav(q, p)
    assert 0.0 <= d <= HALF_CIRCUMFERENCE_KM + 1e-9
    assert hav(p, p) == 0.0


@FAST
@given(points, points, points)
def test_haversine_triangle_inequality(a, b, c):
    # arcsin near antipodes loses ~1e-8 rad: a few centimetres of slack.
    assert hav(a, c) <= hav(a, b) + hav(b, c) + 1e-3


@FAST
@given(points, points)
def test_haversine_agrees_with_haversine_package(p, q):
    from haversine import Unit
    from haversine import haversine as reference

    # The package uses a mean radius of 6371.0088 km: compare the angle, scaled by our radius.
    expected = reference(p, q, unit=Unit.RADIANS) * EARTH_RADIUS_KM
    assert hav(p, q) == pytest.approx(expected, rel=1e-6, abs=1e-9)


distances = st.floats(min_value=0.0, max_value=HALF_CIRCUMFERENCE_KM, allow_nan=False)


@FAST
@given(distances, distances)
def test_geoscore_range_and_monotone(d1, d2):
    s1, s2 = float(geoscore(d1)), float(geoscore(d2))
    assert 0.0 < s1 <= GEOSCORE_MAX
    if d1 < d2:
        assert s1 >= s2
        if d2 - d1 > 1e-6:
            assert s1 > s2
    assert float(geoscore(0.0)) == GEOSCORE_MAX


@FAST
@given(points, st.integers(min_value=1, max_value=7))
def test_spherical_mean_of_copies_is_the_point(p, n):
    lat, lon = spherical_mean(np.full(n, p[0]), np.full(n, p[1]))
    assert float(lat) == pytest.approx(p[0], abs=1e-9)
    # Longitude is arbitrary at the poles and 180 == -180: compare positions on the sphere.
    assert hav(p, (float(np.clip(lat, -90, 90)), float(lon))) < 1e-6


bad_lats = st.one_of(
    st.floats(min_value=90.0, exclude_min=True), st.floats(max_value=-90.0, exclude_max=True),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
bad_lons = st.one_of(
    st.floats(min_value=180.0, exclude_min=True), st.floats(max_value=-180.0, exclude_max=True),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@FAST
@given(points, st.one_of(st.tuples(bad_lats, lons), st.tuples(lats, bad_lons), st.tuples(bad_lats, bad_lons)),
       st.integers(min_value=0, max_value=3))
def test_validate_coords_rejects_invalid(good, bad, where):
    la = [good[0]] * 4
    lo = [good[1]] * 4
    la[where], lo[where] = bad
    with pytest.raises(CoordinateError, match=f"first at index {where}"):
        validate_coords(la, lo)
    with pytest.raises(CoordinateError):
        validate_coords(*bad)


@FAST
@given(st.lists(points, min_size=0, max_size=8))
def test_validate_coords_accepts_valid_range(pts):
    la = [p[0] for p in pts]
    lo = [p[1] for p in pts]
    a, b = validate_coords(la, lo)
    assert a.dtype == np.float64 and a.tolist() == la and b.tolist() == lo


# -------------------------------------------------------------------------------------- readers

PNG = encode_image((2, 2), (1, 2, 3), "PNG")
# Metadata text: anything printable (commas, quotes, newlines, non-ASCII) behind a letter, so arrow
# cannot infer a number, a boolean or a missing value from it.
meta_text = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs", "Cc")), st.sampled_from(list(',"\n '))),
    max_size=12,
).map(lambda s: "x" + s)


@SLOW
@given(
    st.lists(st.tuples(lats, lons, meta_text), min_size=1, max_size=8),
    st.sampled_from(["id", "path"]),
    st.sampled_from([("lat", "lon"), ("Latitude", "LNG"), ("gps_latitude", "long")]),
)
def test_folder_round_trip(rows, by, names):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "sub").mkdir()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([by, names[0], names[1], "note"])
        ids = [f"im{i:02d}" for i in range(len(rows))]
        for i, (ident, (la, lo, note)) in enumerate(zip(ids, rows)):
            rel = (f"sub/{ident}.png" if i % 2 else f"{ident}.png")
            (root / rel).write_bytes(PNG)
            w.writerow([ident if by == "id" else rel, repr(la), repr(lo), note])
        (root / "metadata.csv").write_text(buf.getvalue(), encoding="utf-8")
        table = read_dataset("folder", root)
        assert table["id"].tolist() == ids
        assert table["lat"].tolist() == [r[0] for r in rows]  # bit-exact through repr
        assert table["lon"].tolist() == [r[1] for r in rows]
        assert [math.copysign(1, v) for v in table["lat"]] == [math.copysign(1, r[0]) for r in rows]
        assert table["note"].tolist() == [r[2] for r in rows]
        assert all(type(v) is str for v in table["note"])
        assert table["source"].tolist() == [str(root / ((f"sub/{i}" if k % 2 else i) + ".png")) for k, i in enumerate(ids)]
        assert len(table.attrs["skipped"]) == 0


column_names = st.one_of(
    st.sampled_from(["id", "path", "file", *LAT_NAMES, *LON_NAMES, "ID", " lat ", "", "note"]),
    st.text(max_size=8),
)
# Headers: arbitrary names, plus usually a latitude and a longitude name (sometimes repeated), so the
# generated files get past the column checks and exercise the row handling too.
headers = st.tuples(
    st.lists(column_names, max_size=4),
    st.lists(st.sampled_from(["lat", "Latitude", "lon", "lng", "id", "path"]), max_size=4),
    st.lists(st.sampled_from(["lat", "lon", "id"]), max_size=3),  # repeats of names already there
).flatmap(lambda t: st.permutations(t[0] + t[1] + t[2]).filter(bool))
cells = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "NA", "1e999", "-0", "90", "-180.0", "181", "a", "b", "im00", "a.png"]),
    st.floats(allow_nan=True).map(repr),
    st.text(max_size=6),
)


@SLOW
@given(
    headers,
    st.lists(st.lists(cells, min_size=0, max_size=8), max_size=5),
    st.sampled_from(["folder", "osv5m"]),
    st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]),
)
def test_random_csv_raises_only_dataset_errors(header, rows, kind, encoding):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "images" / "test").mkdir(parents=True)
        for name in ("a", "b", "im00"):
            (root / f"{name}.png").write_bytes(PNG)
            (root / "images" / "test" / f"{name}.png").write_bytes(PNG)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)
        (root / "m.csv").write_bytes(buf.getvalue().encode(encoding, errors="replace"))
        try:
            table = read_dataset(kind, root, split="test" if kind == "osv5m" else None, csv=root / "m.csv")
        except (DatasetError, CoordinateError) as e:
            assert "\n" not in str(e)
            return
        assert len(table) >= 1
        assert table["lat"].between(-90, 90).all() and table["lon"].between(-180, 180).all()
        assert table.columns.is_unique
        for c in table.columns:
            if table[c].dtype == object or str(table[c].dtype) == "str":
                assert all(isinstance(v, str) or v is None or v != v for v in table[c]), c  # never bytes


@SLOW
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda s: s.encode("utf-8")),
                 st.text(st.characters(max_codepoint=255), max_size=300).map(lambda s: s.encode("latin-1"))),
       st.sampled_from(["folder", "osv5m"]))
def test_random_bytes_as_csv_raise_only_dataset_errors(content, kind):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "images" / "test").mkdir(parents=True)
        (root / "a.png").write_bytes(PNG)
        (root / "m.csv").write_bytes(content)
        try:
            read_dataset(kind, root, split="test" if kind == "osv5m" else None, csv=root / "m.csv")
        except (DatasetError, CoordinateError) as e:
            assert "\n" not in str(e) and str(root / "m.csv") in str(e)
