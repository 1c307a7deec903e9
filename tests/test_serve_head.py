"""`geosolver serve --head DIR [--fuse]`: the location head's probability on the map.

The world: photos of four colours taken at four places far apart (red at Oslo, green at Nairobi,
blue at Lima, yellow at Sydney), embedded with the offline ``histogram`` encoder, and a cells head
trained on them. Planted: the gallery also holds one *look-alike* — the very photo the test
uploads (a red one), but located in Sydney. The plain ``nn`` vote answers the look-alike's Sydney
spot (similarity 1); the vote fused with the head (which knows red photos are Oslo's) answers an
Oslo photo instead.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from helpers_heads import km, small_cfg  # noqa: E402
from helpers_serve import post, serve_client  # noqa: E402

#: colour → place (degrees); >= 6000 km apart
COLOURS = {(200, 40, 40): (59.91, 10.75), (40, 170, 60): (-1.29, 36.82), (40, 60, 200): (-12.05, -77.04), (220, 200, 40): (-33.87, 151.21)}
OSLO, SYDNEY = (59.91, 10.75), (-33.87, 151.21)
LOOKALIKE_AT = (-33.5, 151.0)  # the look-alike's (wrong) spot, in Sydney
N_PER = 15


def colour_photo(rgb, seed: int) -> bytes:
    """An 8x6-block photo of ``rgb`` with each block's colour jittered (±25), PNG bytes."""
    rng = np.random.default_rng(seed)
    blocks = np.clip(np.array(rgb)[None, None, :] + rng.integers(-25, 26, (6, 8, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blocks).resize((64, 48), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Overrides conftest's ``world``: the colour gallery (+ the look-alike) and a cells head on it."""
    from geosolver.encoders import load_encoder
    from geosolver.heads import train_head
    from geosolver.store import write_store

    root = tmp_path_factory.mktemp("serve-head")
    enc = load_encoder("histogram")
    rng = np.random.default_rng(0)
    photos, lat, lon = [], [], []
    for c, (rgb, (la, lo)) in enumerate(COLOURS.items()):
        for i in range(N_PER):
            photos.append(colour_photo(rgb, 100 * c + i))
            lat.append(la + 0.2 * rng.standard_normal())
            lon.append(lo + 0.2 * rng.standard_normal())
    upload = colour_photo((200, 40, 40), 999)  # red: an Oslo photo
    photos.append(upload)
    lat.append(LOOKALIKE_AT[0])
    lon.append(LOOKALIKE_AT[1])
    meta = pd.DataFrame({"id": [f"g{i}" for i in range(len(lat))], "lat": lat, "lon": lon})
    store = write_store(root / "gallery", enc.embed_images(photos), meta, enc.identity())
    train_head(small_cfg(store, root / "head", "cells", epochs=30, max_per_cell=8), progress=False)
    return {"store": store, "encoder": enc, "head": root / "head", "upload": upload, "root": root}


@pytest.fixture(scope="module")
def serve_options(world):
    return {"head": str(world["head"]), "strategy": "nn", "k": 10, "warmup": False}


def test_the_answer_carries_the_heads_cells_and_the_top_cell_holds_its_guess(client, world):
    from geosolver.heads import load_head

    r = post(client, world["upload"], "red.png", "image/png")
    assert r.status_code == 200, r.text
    h = r.json()["head"]
    assert len(json.dumps(h)) < 20_000
    assert h["kind"] == "cells" and h["fused"] is False and 1 <= len(h["cells"]) <= 20
    ps = [c["p"] for c in h["cells"]]
    assert all(0 <= p <= 1 for p in ps) and sum(ps) <= 1.0 and ps == sorted(ps, reverse=True)
    # the head's own guess, computed here from the photo's embedding, lies in the top cell's box
    g = load_head(world["head"]).predict(world["encoder"].embed_images([world["upload"]]))
    s, w, n, e = h["cells"][0]["bounds"]
    assert s <= g.lat[0] <= n and w <= g.lon[0] <= e
    assert (h["predicted"]["lat"], h["predicted"]["lon"]) == pytest.approx((g.lat[0], g.lon[0]), abs=1e-9)
    assert km(g.lat[0], g.lon[0], *OSLO) < 150  # the head learnt that red photos are Oslo's
    # shown, not fused: the plain nn vote answers the look-alike's spot
    assert (r.json()["lat"], r.json()["lon"]) == pytest.approx(LOOKALIKE_AT, abs=1e-4)
    assert client.get("/api/health").json()["head"]["kind"] == "cells"


def test_fusing_with_the_head_outvotes_the_look_alike(geoloc, world):
    with serve_client(geoloc, head=str(world["head"]), fuse=True, strategy="nn", k=10, warmup=False) as c:
        r = post(c, world["upload"], "red.png", "image/png")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["head"]["fused"] is True
    assert d["neighbours"][0]["lat"] == pytest.approx(LOOKALIKE_AT[0], abs=1e-4)  # the look-alike is still the nearest
    assert km(d["lat"], d["lon"], *OSLO) < 150 and km(d["lat"], d["lon"], *SYDNEY) > 10_000


def test_cell_boxes_tile_the_sphere_as_the_cells_do(world):
    from geosolver.heads import load_head

    cells = load_head(world["head"]).cells
    b = cells.bounds()
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-90, 90, 2000), rng.uniform(-180, 180, 2000)
    inside = (b[None, :, 0] <= lat[:, None]) & (lat[:, None] < b[None, :, 2]) & (b[None, :, 1] <= lon[:, None]) & (lon[:, None] < b[None, :, 3])
    assert (inside.sum(axis=1) == 1).all()  # every point in exactly one box ...
    np.testing.assert_array_equal(inside.argmax(axis=1), cells.cell_of(lat, lon))  # ... the box of its cell
    # areas (in degrees²) add up to the whole lat/lon rectangle
    assert ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum() == pytest.approx(180 * 360)


def test_a_flow_heads_block_is_the_heaviest_cells_of_its_probability_grid(world, tmp_path):
    from geosolver.heads import load_head, train_head
    from geosolver.serve.headmap import FLOW_GRID_DEG, HeadMap

    train_head(small_cfg(world["store"], tmp_path / "flow", "flow", epochs=3, samples=32, ode_steps=4), progress=False)
    head = load_head(tmp_path / "flow")
    emb = world["encoder"].embed_images([world["upload"]])
    (block,) = HeadMap(head, top=20).blocks(emb)
    assert block["kind"] == "flow" and len(block["cells"]) == 20 and len(json.dumps(block)) < 20_000
    ps = [c["p"] for c in block["cells"]]
    assert sum(ps) <= 1.0 and ps == sorted(ps, reverse=True) and ps[0] > 0
    _, _, grid = head.density_map(emb[0], step_deg=FLOW_GRID_DEG)  # the whole map sums to 1: the top 20 of it
    assert sum(ps) == pytest.approx(np.sort(grid, axis=None)[::-1][:20].sum(), abs=1e-4)
    for c in block["cells"]:  # 5° boxes centred on the grid's points
        s, w, n, e = c["bounds"]
        assert (n - s, e - w) == pytest.approx((FLOW_GRID_DEG, FLOW_GRID_DEG)) and ((s + n) / 2, (w + e) / 2) == pytest.approx((c["lat"], c["lon"]))
