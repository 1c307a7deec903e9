"""A gallery of well-separated photo clusters for the location-head tests (tests/test_heads*.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geosolver.heads import HeadConfig
from geosolver.store import write_store

ENC = {"name": "synthetic-heads", "dim": 16}
#: four well-separated places: Oslo, Nairobi, Lima, Sydney
PLACES = [(59.91, 10.75), (-1.29, 36.82), (-12.05, -77.04), (-33.87, 151.21)]
R = 6371.0


def km(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * R * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def cluster_store(path, n_per: int = 60, seed: int = 0, encoder=ENC, spread_deg: float = 0.3, prefix: str = "g"):
    """Each place gets its own random unit direction; its photos are that direction plus noise,
    taken within ~``spread_deg`` of the place."""
    rng = np.random.default_rng(seed)
    dirs = np.random.default_rng(99).standard_normal((len(PLACES), encoder["dim"]))
    emb, lat, lon = [], [], []
    for c, (la, lo) in enumerate(PLACES):
        e = dirs[c] + 0.15 * rng.standard_normal((n_per, encoder["dim"]))
        emb.append(e / np.linalg.norm(e, axis=1, keepdims=True))
        lat.append(la + spread_deg * rng.standard_normal(n_per))
        lon.append(lo + spread_deg * rng.standard_normal(n_per))
    emb, lat, lon = np.concatenate(emb).astype(np.float32), np.concatenate(lat), np.concatenate(lon)
    meta = pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(lat))], "lat": lat, "lon": lon})
    store = write_store(path, emb, meta, encoder)
    queries = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    return store, queries.astype(np.float32)


def small_cfg(store, out, kind, **kw):
    base = dict(gallery=str(store.path), kind=kind, out=str(out), epochs=15, batch_size=32, hidden=32, max_per_cell=20,
                device="cpu", samples=64, ode_steps=8, kde_km=300.0, blocks=2, save_every=5)
    base.update(kw)
    return HeadConfig(**base)
