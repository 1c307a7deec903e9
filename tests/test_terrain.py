"""terrain: tile rendering (antimeridian, poles, augmentation, known places) and the world builder (splits, sources,\nTerrainConfig -> run -> TerrainWorld, the CLI derived from the config)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geosolver import geodata, terrain
from geosolver.cli import main
from geosolver.places import reverse_geocode


def _dihedral(t: np.ndarray) -> list[np.ndarray]:
    out = []
    for f in (t, t[:, ::-1]):
        out += [np.rot90(f, k) for k in range(4)]
    return out


def _load_tiles(root, meta: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / p)) for p in meta["path"]])


def test_plain_tile_is_the_palette_coloured_window():
    # Unaugmented tile = land-cover/climate window upsampled x2, colour 0.7*IGBP + 0.3*Koppen (computed here).
    # the point sits 0.2 px into its source pixel (rows and columns), where the x2 nearest-neighbour
    # sampling grid lines up with the integer window around the point's pixel
    lat, lon = 48.04, 2.01
    t = terrain.render_tiles([lat], [lon], augment=False, tile_size=64, window_px=32)[0]
    lc = geodata.window("land_cover", lat, lon, 16).repeat(2, 0).repeat(2, 1)
    kg = geodata.window("climate", lat, lon, 16).repeat(2, 0).repeat(2, 1)
    expect = np.rint(0.7 * geodata.IGBP_PALETTE[lc].astype(float) + 0.3 * geodata.KOPPEN_PALETTE[kg]).astype(np.uint8)
    assert np.abs(t.astype(int) - expect).max() <= 1  # float32 vs float64 rounding only
    assert len(np.unique(lc)) > 1  # a window with structure, so the test can fail


def test_tiles_across_the_antimeridian_match_and_have_no_blank_column():
    t = terrain.render_tiles([67.01, 67.01, 67.01], [179.99, -179.99, 170.0], augment=False)
    a, b, far = (x.astype(float) for x in t)
    near_diff = np.abs(a - b).mean()
    far_diff = np.abs(a - far).mean()
    assert near_diff < 3.0 < far_diff  # 0.02° apart across ±180: nearly the same picture
    # palette colours are never black: a black (or fill) column would be a seam
    assert (t.reshape(3, -1, 3).sum(-1) > 0).all()
    codes = geodata.window("land_cover", 67.01, 179.99, 16)
    assert (codes != geodata.LAND_COVER_FILL).all()


def test_tiles_at_the_poles_and_edges():
    lat = np.array([90.0, -90.0, 89.99, -89.99, 0.0])
    lon = np.array([0.0, 180.0, -180.0, 179.999, -180.0])
    t = terrain.render_tiles(lat, lon, rng=0)
    assert t.shape == (5, 64, 64, 3) and t.dtype == np.uint8
    t2 = terrain.render_tiles(lat, lon, rng=0, tile_size=48, window_px=20)
    assert t2.shape == (5, 48, 48, 3)


def test_augmentation_hides_the_source_window():
    lat, lon = np.full(8, 40.5), np.full(8, -3.5)
    plain = terrain.render_tiles(lat[:1], lon[:1], augment=False)[0].astype(float)
    aug = terrain.render_tiles(lat, lon, rng=1).astype(float)
    for t in aug:  # no augmented tile is the plain tile under any rotation/flip
        assert min(np.abs(d - t).mean() for d in _dihedral(plain)) > 2.0
    assert len({t.tobytes() for t in aug}) == 8  # same point, different tiles
    np.testing.assert_array_equal(terrain.render_tiles(lat, lon, rng=1), aug.astype(np.uint8))  # seeded


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    out = {}
    for name, split, seed in [("a", "random", 0), ("b", "random", 1), ("h", "held-out-cells", 0)]:
        out[name] = (root / name, terrain.build_world(root / name, 200, 50, split=split, seed=seed, progress=False))
    return out


def test_world_files_and_columns(worlds):
    root, info = worlds["a"]
    g = pd.read_csv(root / "gallery.csv", keep_default_na=False)
    q = pd.read_csv(root / "queries.csv", keep_default_na=False)
    assert list(g.columns) == list(terrain.CSV_COLUMNS) and list(q.columns) == list(terrain.CSV_COLUMNS)
    assert len(g) == 200 and len(q) == 50 and info["counts"]["gallery"] == 200
    assert g["id"].is_unique and not set(g["id"]) & set(q["id"])
    for p in list(g["path"]) + list(q["path"]):
        im = Image.open(root / p)
        assert im.size == (64, 64) and im.mode == "RGB"
    # the metadata are the rasters' values at the labelled point
    assert list(g["land_cover"]) == list(geodata.land_cover_name(g["lat"].to_numpy(), g["lon"].to_numpy()))
    assert list(g["climate"]) == list(geodata.climate_name(g["lat"].to_numpy(), g["lon"].to_numpy()))
    lat0 = np.floor((g["lat"] + 90) / 2) * 2 - 90
    assert all(c.startswith(f"c2:{abs(int(a))}{'N' if a >= 0 else 'S'}_") for c, a in zip(g["cell"], lat0))
    world = json.loads((root / "world.json").read_text())
    assert "not comparable" in world["note"].lower() or "never with street-view" in world["note"]
    assert {"land_cover", "climate", "places"} <= set(world["attribution"])
    cfg = json.loads((root / "config.json").read_text())
    assert cfg["seed"] == 0 and cfg["split"] == "random" and cfg["window_px"] == 32


def test_points_are_on_land_near_populated_places(worlds):
    for root, _ in worlds.values():
        for f in ("gallery.csv", "queries.csv"):
            m = pd.read_csv(root / f, keep_default_na=False)
            assert geodata.is_land(m["lat"].to_numpy(), m["lon"].to_numpy()).all()
            # jitter sigma 7 km: P(> 60 km) from the source place is ~e^-36
            assert (reverse_geocode(m["lat"].to_numpy(), m["lon"].to_numpy())["place_km"] < 60).all()


def test_another_seed_draws_other_places(worlds):
    (ra, _), (rb, _) = worlds["a"], worlds["b"]
    ga, gb = pd.read_csv(ra / "gallery.csv"), pd.read_csv(rb / "gallery.csv")
    assert np.abs(ga["lat"] - gb["lat"]).max() > 1.0


@pytest.mark.parametrize("lat, lon, land_cover, climate, share", [
    (23.4, 10.0, "barren", "BWh", 1.0),                           # central Sahara: hot desert
    (75.0, -40.0, "snow and ice", "EF", 1.0),                     # Greenland ice sheet: ice cap
    (-5.0, -65.0, "evergreen broadleaf forest", "Af", 0.85),       # western Amazon: rainforest
])
def test_a_tile_shows_the_known_land_cover_and_climate_of_its_place(lat, lon, land_cover, climate, share):
    """Places whose land cover and climate are known without the rasters: their plain tile is (mostly)
    the colour 0.7 x IGBP palette + 0.3 x Koppen palette of those classes."""
    lc = geodata.LAND_COVER_NAMES.index(land_cover)
    kg = geodata.CLIMATE_NAMES.index(climate)
    colour = np.rint(0.7 * geodata.IGBP_PALETTE[lc].astype(float) + 0.3 * geodata.KOPPEN_PALETTE[kg])
    tile = terrain.render_tiles([lat], [lon], augment=False)[0].reshape(-1, 3).astype(float)
    assert (np.abs(tile - colour).max(axis=1) <= 1).mean() >= share
    assert np.atleast_1d(geodata.land_cover_name(lat, lon))[0] == land_cover
    assert np.atleast_1d(geodata.climate_name(lat, lon))[0] == climate


def test_no_query_tile_is_a_gallery_tile(worlds):
    root, _ = worlds["a"]
    g = _load_tiles(root, pd.read_csv(root / "gallery.csv")).astype(np.float32)
    q = _load_tiles(root, pd.read_csv(root / "queries.csv")).astype(np.float32)
    gflat = g.reshape(len(g), -1)
    best = np.inf
    for t in q:
        for d in _dihedral(t):
            best = min(best, float(np.abs(gflat - d.reshape(1, -1)).mean(axis=1).min()))
    assert best > 3.0  # the noise alone makes two renders of one place differ by ~6.8 grey levels


def test_held_out_cells_split(worlds):
    root, info = worlds["h"]
    g = pd.read_csv(root / "gallery.csv", keep_default_na=False)
    q = pd.read_csv(root / "queries.csv", keep_default_na=False)

    def cells(m):  # 2-degree cells computed here, independently of the labels in the CSV
        return set(zip(np.floor((m["lat"] + 90) / 2).astype(int), np.floor((m["lon"] + 180) / 2).astype(int)))

    assert cells(g).isdisjoint(cells(q))
    assert set(g["cell"]).isdisjoint(set(q["cell"]))
    assert len(q) == 50 and info["counts"]["held_out_cells"] > 0
    assert info["settings"]["split"] == "held-out-cells"


def test_bad_arguments(tmp_path, worlds):
    with pytest.raises(terrain.TerrainError, match="split"):
        terrain.build_world(tmp_path / "x", 10, 5, split="by-country")
    with pytest.raises(terrain.TerrainError):
        terrain.build_world(tmp_path / "x", 0, 0)
    root, _ = worlds["a"]
    with pytest.raises(terrain.TerrainError, match="already holds"):
        terrain.build_world(root, 10, 5)



def test_config_json_follows_the_run_directory_contract(worlds):
    root, _ = worlds["a"]
    cfg = json.loads((root / "config.json").read_text())
    assert cfg["command"] == "terrain build" and {"geosolver_version", "argv", "created"} <= set(cfg)


def test_out_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    from geosolver.errors import GeosolverError

    f = tmp_path / "a-file"
    f.write_text("")
    with pytest.raises(GeosolverError, match="is a file"):
        terrain.build_world(f, 10, 5, progress=False)
    assert main(["terrain", "build", "--out", str(f), "--gallery", "3", "--queries", "1"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err

def test_cli_build_and_read_back(tmp_path, capsys):
    out = tmp_path / "w"
    rc = main(["terrain", "build", "--out", str(out), "--gallery", "30", "--queries", "10",
               "--split", "held-out-cells", "--seed", "4", "--tile-size", "32", "--window", "16", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "30 gallery + 10 query tiles" in text
    assert Image.open(out / pd.read_csv(out / "queries.csv")["path"][0]).size == (32, 32)
    assert main(["terrain", "build", "--out", str(out), "--gallery", "3", "--queries", "1"]) == 2  # exists
    data = pytest.importorskip("geosolver.data")
    ds = data.read_dataset("folder", root=out, csv=out / "gallery.csv")
    assert len(ds) == 30
    np.testing.assert_allclose(ds["lat"].to_numpy(), pd.read_csv(out / "gallery.csv")["lat"].to_numpy())


def test_config_run_result(tmp_path):
    cfg = terrain.TerrainConfig(str(tmp_path / "w"), n_gallery=6, n_queries=2, seed=5, tile_size=16, window_px=8, progress=False)
    w = terrain.run(cfg)
    assert isinstance(w, terrain.TerrainWorld) and w.out == tmp_path / "w"
    assert (w.counts["gallery"], w.counts["queries"]) == (6, 2) and w.seconds["total"] > 0
    assert w.manifest == json.loads((tmp_path / "w" / "world.json").read_text())
    assert w.manifest["settings"]["window_deg"] == pytest.approx(8 * 0.05)
    assert Image.open(tmp_path / "w" / pd.read_csv(tmp_path / "w" / "gallery.csv")["path"][0]).size == (16, 16)


def test_cli_options_are_the_config_fields(capsys):
    from geosolver.cli import build_parser
    from geosolver.cli.args import config_from_args

    parse = build_parser({"terrain"}).parse_args
    args = parse(["terrain", "build", "--out", "o", "--gallery", "3", "--queries", "1", "--window", "8", "--cell-size", "0.5",
                  "--split", "held-out-cells", "--queries-from", "land", "--no-progress", "--overwrite"])
    assert config_from_args(terrain.TerrainConfig, args) == terrain.TerrainConfig(
        "o", 3, 1, split="held-out-cells", queries_from="land", window_px=8, cell_size=0.5, progress=False, overwrite=True)
    # the defaults of a bare command line are the documented ones
    bare = config_from_args(terrain.TerrainConfig, parse(["terrain", "build", "--out", "o", "--gallery", "2", "--queries", "1"]))
    assert (bare.split, bare.seed, bare.tile_size, bare.window_px, bare.cell_size, bare.holdout_fraction) == ("random", 0, 64, 32, 2.0, 0.2)
    assert (bare.jitter_km, bare.progress, bare.overwrite) == (7.0, True, False)
    for bad in (["--gallery", "0", "--queries", "1"], ["--gallery", "2"], ["--gallery", "2", "--queries", "1", "--jitter-km", "3"]):
        with pytest.raises(SystemExit) as e:
            parse(["terrain", "build", "--out", "o", *bad])
        assert e.value.code == 2
    capsys.readouterr()


def test_gallery_only_world(tmp_path):
    info = terrain.build_world(tmp_path / "g", 7, 0, split="held-out-cells", seed=2, progress=False)
    assert info["counts"]["gallery"] == 7 and info["counts"]["queries"] == 0
    assert len(pd.read_csv(tmp_path / "g" / "queries.csv")) == 0
    assert len(list((tmp_path / "g" / "images" / "gallery").glob("*.png"))) == 7


# ----------------------------------------------------------------------------- query / gallery distributions
def test_query_distribution_constants_and_bad_values(tmp_path, capsys):
    assert terrain.QUERY_DISTRIBUTIONS == ("population", "land", "settlements")
    assert terrain.GALLERY_SOURCES == ("geonames", "mp16")
    with pytest.raises(terrain.TerrainError, match="queries_from"):
        terrain.build_world(tmp_path / "x", 10, 5, queries_from="ocean", progress=False)
    with pytest.raises(terrain.TerrainError, match="gallery_from"):
        terrain.build_world(tmp_path / "y", 10, 5, gallery_from="flickr", progress=False)
    with pytest.raises(SystemExit) as e:
        main(["terrain", "build", "--out", str(tmp_path / "z"), "--gallery", "3", "--queries", "1", "--queries-from", "sea"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_area_uniform_queries_are_spread_by_area_not_by_people():
    rng = np.random.default_rng(0)
    la, lo = terrain.sample_area(3000, rng)
    assert geodata.is_land(la, lo).all() and terrain.has_raster_data(la, lo).all()
    km = reverse_geocode(la, lo)["place_km"].to_numpy()
    # population-weighted points sit within ~60 km of a place; area-uniform ones often do not
    # (Sahara, Siberia, Antarctica, Canadian Arctic, Amazon)
    assert np.mean(km > 100) > 0.2
    assert 0.03 < np.mean(la < -60) < 0.15  # Antarctica is ~9 % of the land area
    # uniform on the sphere: lat density ∝ cos(lat) → |lat| > 60 has much more area than people
    sl, _ = terrain.sample_area(2000, np.random.default_rng(1), near_places_km=terrain.SETTLEMENT_KM)
    skm = reverse_geocode(sl, _)["place_km"].to_numpy()
    assert (skm <= terrain.SETTLEMENT_KM + 1e-6).all() and (sl > -60).all()
    assert np.mean(skm > 10) > 0.3  # uniform within the 25 km discs, not piled on the places
    np.testing.assert_array_equal(terrain.sample_area(50, np.random.default_rng(5))[0],
                                  terrain.sample_area(50, np.random.default_rng(5))[0])


def test_world_with_land_and_settlement_queries(tmp_path, worlds):
    for qf in ("land", "settlements"):
        info = terrain.build_world(tmp_path / qf, 200, 50, seed=0, queries_from=qf, progress=False)
        assert info["settings"]["queries_from"] == qf
        q = pd.read_csv(tmp_path / qf / "queries.csv", keep_default_na=False)
        la, lo = q["lat"].to_numpy(), q["lon"].to_numpy()
        assert len(q) == 50 and geodata.is_land(la, lo).all() and terrain.has_raster_data(la, lo).all()
        km = reverse_geocode(la, lo)["place_km"].to_numpy()
        if qf == "settlements":
            assert (km <= 25.0 + 0.01).all()  # the CSV rounds to 1e-6 degrees
        else:
            assert (km > 60).any()  # impossible for the population-weighted default
    # the gallery does not depend on where the queries come from (same seed, same stream)
    assert (tmp_path / "land" / "gallery.csv").read_text() == (tmp_path / "settlements" / "gallery.csv").read_text()
    assert (tmp_path / "land" / "queries.csv").read_text() != (tmp_path / "settlements" / "queries.csv").read_text()
    held = terrain.build_world(tmp_path / "h", 30, 20, split="held-out-cells", queries_from="land", progress=False)
    g = pd.read_csv(tmp_path / "h" / "gallery.csv", keep_default_na=False)
    q = pd.read_csv(tmp_path / "h" / "queries.csv", keep_default_na=False)
    assert set(g["cell"]).isdisjoint(set(q["cell"])) and held["counts"]["queries"] == 20
    # the default world's settings have no new keys (its files stay byte-identical)
    assert "queries_from" not in worlds["a"][1]["settings"] and "gallery_from" not in worlds["a"][1]["settings"]


def test_mp16_gallery_drops_sea_points_and_reports_them(tmp_path, monkeypatch):
    from geosolver import mp16

    pool = np.array([[48.85, 2.35], [40.71, -74.0], [35.68, 139.69], [0.0, -140.0], [-33.87, 151.21],
                     [51.5, -0.12], [30.0, -40.0], [55.75, 37.62], [-22.9, -43.2], [19.43, -99.13]])
    monkeypatch.setattr(mp16, "load_coordinates", lambda *a, **k: pool)
    info = terrain.build_world(tmp_path / "m", 5, 4, seed=0, gallery_from="mp16", progress=False)
    m = info["counts"]["mp16"]
    assert m["pool"] == 10 and m["dropped_sea_or_no_raster"] == 2 and m["usable"] == 8 and m["drawn"] == 5
    g = pd.read_csv(tmp_path / "m" / "gallery.csv")
    rows = {tuple(r) for r in np.round(pool, 6)}
    assert all((round(a, 6), round(b, 6)) in rows for a, b in zip(g["lat"], g["lon"]))  # real coordinates, no jitter
    assert not ({(0.0, -140.0), (30.0, -40.0)} & {(a, b) for a, b in zip(g["lat"], g["lon"])})
    assert len(list((tmp_path / "m" / "images" / "gallery").glob("*.png"))) == 5
    assert "mp16" in info["attribution"] and info["settings"]["gallery_from"] == "mp16"
    with pytest.raises(terrain.TerrainError, match="only 8 of 10"):
        terrain.build_world(tmp_path / "m2", 9, 1, gallery_from="mp16", progress=False)
