import math

import numpy as np
import pytest
from haversine import Unit, haversine as ref_haversine

from geosolver import geo


def _random_points(rng, n):
    return rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)


def test_haversine_matches_reference_package():
    rng = np.random.default_rng(0)
    la1, lo1 = _random_points(rng, 500)
    la2, lo2 = _random_points(rng, 500)
    ours = geo.haversine(la1, lo1, la2, lo2)
    ref = np.array([ref_haversine((a, b), (c, d), unit=Unit.KILOMETERS) for a, b, c, d in zip(la1, lo1, la2, lo2)])
    # the reference package uses mean radius 6371.0088 km; ours uses 6371 km
    np.testing.assert_allclose(ours, ref * 6371.0 / 6371.0088, rtol=1e-9, atol=1e-6)


def test_haversine_torch_matches_numpy_and_has_gradient():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    la1, lo1 = _random_points(rng, 100)
    la2, lo2 = _random_points(rng, 100)
    t = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (la1, lo1, la2, lo2)]
    d = geo.haversine_torch(*t)
    np.testing.assert_allclose(d.detach().numpy(), geo.haversine(la1, lo1, la2, lo2), rtol=1e-10)
    d.sum().backward()
    assert t[0].grad is not None and torch.isfinite(t[0].grad).all()


def test_known_distances():
    # a quarter of a great circle, and the antimeridian neighbours
    assert geo.haversine(0, 0, 0, 90) == pytest.approx(math.pi / 2 * 6371.0)
    assert geo.haversine(0, 179.95, 0, -179.95) == pytest.approx(0.1 * math.pi / 180 * 6371.0, rel=1e-6)
    assert geo.haversine(90, 0, 90, 123) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("bad", [(np.nan, 0.0), (91.0, 0.0), (0.0, 181.0), (0.0, np.inf)])
def test_bad_coordinates_raise_clear_error(bad):
    with pytest.raises(geo.CoordinateError, match="lat="):
        geo.haversine(bad[0], bad[1], 0.0, 0.0)


def test_geoscore_and_accuracy():
    assert geo.geoscore(0.0) == pytest.approx(5000.0)
    assert geo.geoscore(1492.7) == pytest.approx(5000.0 / math.e)
    km = np.array([0.5, 10, 100, 500, 1000, 3000])
    acc = geo.accuracy_at(km)
    assert acc == {"acc@1km": 1 / 6, "acc@25km": 2 / 6, "acc@200km": 3 / 6, "acc@750km": 4 / 6, "acc@2500km": 5 / 6}
    m = geo.distance_metrics(km)
    assert m["median_km"] == pytest.approx(300.0)
    assert m["geoscore"] == pytest.approx(np.mean([5000 * math.exp(-k / 1492.7) for k in km]))


def test_accuracy_counts_a_distance_exactly_at_the_threshold():
    """'at or below': an error equal to the threshold is a hit."""
    acc = geo.accuracy_at([1.0, 25.0, 200.0, 750.0, 2500.0])
    assert acc == {"acc@1km": 1 / 5, "acc@25km": 2 / 5, "acc@200km": 3 / 5, "acc@750km": 4 / 5, "acc@2500km": 1.0}
    # one degree of the equator is 6371 km * pi / 180 = 111.19492664455873 km, and so is its haversine
    one_degree = 6371.0 * math.pi / 180.0
    d = geo.haversine(0.0, 0.0, 0.0, 1.0)
    assert float(d) == one_degree
    assert geo.accuracy_at(d, [one_degree]) == {f"acc@{one_degree:g}km": 1.0}
    assert geo.accuracy_at(d, [111.19]) == {"acc@111.19km": 0.0}


def test_spherical_mean_across_antimeridian_and_pole():
    lat, lon = geo.spherical_mean([10.0, 10.0], [179.0, -179.0])
    assert abs(abs(lon) - 180.0) < 1e-6 and lat == pytest.approx(10.0, abs=0.01)
    lat, lon = geo.spherical_mean([89.0, 89.0], [0.0, 180.0])
    assert lat == pytest.approx(90.0, abs=1e-6)
    # weights pull the mean towards the heavier point
    lat, lon = geo.spherical_mean([0.0, 0.0], [0.0, 10.0], weights=[3.0, 1.0])
    assert 0.0 < lon < 5.0
    # batched over a leading axis
    lat, lon = geo.spherical_mean(np.array([[0.0, 0.0], [20.0, 20.0]]), np.array([[0.0, 2.0], [50.0, 52.0]]))
    np.testing.assert_allclose(lat, [0.0, 20.0], atol=0.01)
    np.testing.assert_allclose(lon, [1.0, 51.0], atol=0.01)


def test_spherical_mean_degenerate_falls_back_to_heaviest_point():
    lat, lon = geo.spherical_mean([0.0, 0.0], [0.0, 180.0], weights=[1.0, 1.0 + 1e-15])
    assert np.isfinite(lat) and np.isfinite(lon)


def test_medoid_picks_central_point():
    lat = np.array([0.0, 0.1, -0.1, 0.0, 40.0])
    lon = np.array([0.0, 0.0, 0.0, 0.1, 40.0])
    assert geo.medoid(lat, lon) == 0


def test_grid_cells():
    c = geo.grid_cell([0.5, 0.5, -89.99, 90.0], [0.5, 1.5, -180.0, 180.0], size_deg=1.0)
    assert c[0] != c[1]
    assert c[2] == 0  # south-west corner cell
    assert c[3] == 179 * 360 + 0  # lat 90 in the top row, lon 180 wraps to -180
    assert geo.grid_cell_label(48.8, 2.3, 2.0) == ["c2:48N_2E"]
    assert geo.grid_cell_label(-33.9, -70.6, 2.0) == ["c2:34S_72W"]
    with pytest.raises(ValueError):
        geo.grid_cell(0, 0, size_deg=0)


def test_xyz_roundtrip():
    rng = np.random.default_rng(3)
    lat, lon = geo.random_points_on_sphere(1000, rng)
    la2, lo2 = geo.xyz_to_latlon(geo.latlon_to_xyz(lat, lon))
    np.testing.assert_allclose(la2, lat, atol=1e-9)
    assert np.max(geo.haversine(lat, lon, la2, lo2)) < 1e-6
    # uniform on the sphere: mean of sin(lat) ~ 0, share of |lat| < 30 ~ 0.5
    assert abs(np.mean(np.abs(lat) < 30) - 0.5) < 0.05


def test_spherical_mean_degenerate_answers_exactly_the_heaviest_point():
    # (-30, -170) is the antipode of (30, 10): weights 1 + 1 against 2 cancel exactly, so the
    # mean direction is undefined and the single heaviest point, (30, 10), must be the answer
    lat, lon = geo.spherical_mean([-30.0, -30.0, 30.0], [-170.0, -170.0, 10.0], weights=[1.0, 1.0, 2.0])
    assert lat == pytest.approx(30.0, abs=1e-9) and lon == pytest.approx(10.0, abs=1e-9)
    # batched, points along axis 0: only the degenerate column falls back
    lat, lon = geo.spherical_mean(
        np.array([[-30.0, 0.0], [30.0, 0.0]]), np.array([[-170.0, 0.0], [10.0, 2.0]]), weights=np.array([[1.0, 1.0], [1.0 + 1e-15, 1.0]]), axis=0
    )
    np.testing.assert_allclose(lat, [30.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(lon, [10.0, 1.0], atol=1e-9)
