"""The `geosolver serve` test world, shared by tests/test_serve*.py: a gallery of distinct block
patterns at known places in Europe, embedded with the tiny random CLIP from the very bytes the
tests upload, and upload helpers. The module-scoped ``world`` / ``geoloc`` / ``serve_options`` /
``client`` fixtures built from them live in tests/conftest.py (each test module gets its own world;
a module overrides ``world`` and ``serve_options`` to serve another gallery or other options).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers_data import make_exif

N_GALLERY = 24
PARIS = (48.8566, 2.3522)
GPS_ROW, ROT_ROW, PNG_ROW, WEBP_ROW = 3, 5, 7, 9


def pattern(i: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Image ``i``: a seeded 8x6 grid of random colour blocks, ``size`` (w, h) pixels."""
    rng = np.random.default_rng(1000 + i)
    blocks = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(blocks).resize(size, Image.NEAREST)


def gallery_coords(i: int) -> tuple[float, float]:
    """(lat, lon) degrees of gallery photo ``i``: spread over Europe."""
    return round(36.0 + (i * 7.3) % 24.0, 4), round(-9.0 + (i * 11.7) % 39.0, 4)


def encode(img: Image.Image, fmt: str, exif: Image.Exif | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    if exif is not None:
        kw["exif"] = exif.tobytes()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def build_world(root: Path, clip_dir: str, gps_photo: bytes | None = None) -> dict:
    """Write a gallery store of ``N_GALLERY`` photos under ``root``; return the upload bytes.

    Args:
        gps_photo: encoded photo to use as ``gps.jpg`` (default: pattern ``GPS_ROW`` as a JPEG with
            EXIF GPS at ``PARIS``); gallery row ``GPS_ROW`` is embedded from these bytes.

    Returns:
        ``{"store": path, "encoder": Encoder, "meta": DataFrame, "uploads": {name: bytes}}`` where
        each upload's decoded pixels are exactly those of one gallery row.
    """
    import torch

    from geosolver.encoders import load_encoder
    from geosolver.store import write_store

    torch.set_num_threads(1)
    enc = load_encoder(clip_dir, device="cpu")
    sources: list[bytes] = [encode(pattern(i), "PNG") for i in range(N_GALLERY)]
    uploads = {
        # JPEG with EXIF GPS (the true spot: Paris)
        "gps.jpg": gps_photo or encode(pattern(GPS_ROW), "JPEG", make_exif(gps=PARIS), quality=92),
        # phone-style JPEG: pixels stored sideways (80x60) + EXIF orientation 6 -> upright 60x80
        "rot.jpg": encode(pattern(ROT_ROW, (60, 80)).transpose(Image.Transpose.ROTATE_90), "JPEG", make_exif(orientation=6), quality=92),
        "plain.png": sources[PNG_ROW],
        "plain.webp": encode(pattern(WEBP_ROW), "WEBP", lossless=True),
    }
    sources[GPS_ROW], sources[ROT_ROW], sources[WEBP_ROW] = uploads["gps.jpg"], uploads["rot.jpg"], uploads["plain.webp"]
    emb = enc.embed_images(sources)
    lat, lon = zip(*(gallery_coords(i) for i in range(N_GALLERY)))
    meta = pd.DataFrame({"id": [f"g{i:03d}" for i in range(N_GALLERY)], "lat": lat, "lon": lon})
    store = root / "gallery"
    write_store(store, emb, meta, encoder=enc.identity())
    return {"store": store, "encoder": enc, "meta": meta, "uploads": uploads, "clip_dir": clip_dir}


def serve_client(geoloc, **options):
    """A ``TestClient`` (use it as a context manager) of ``create_app(geoloc, **options)``."""
    from fastapi.testclient import TestClient

    from geosolver.serve import create_app

    return TestClient(base_url="http://127.0.0.1", app=create_app(geoloc, **options))


def post(client, data: bytes, name: str = "photo.jpg", ctype: str = "application/octet-stream", params=None, form=None, field: str = "file"):
    return client.post("/api/locate", files={field: (name, data, ctype)}, params=params or {}, data=form or {})


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
