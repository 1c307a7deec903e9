"""Builders of miniature datasets from generated images, for tests (reusable by every test file).

Every builder returns the *ground truth* it wrote (a DataFrame) computed here, independently of
:mod:`geosolver.data`, so tests can compare the readers' output against it. Images are solid colour
(:func:`color_for`), so a decoded image can be matched to its row: pixel-equal for PNG, within a few
levels for JPEG.

    from helpers_data import make_osv5m_tree, make_folder_dataset, make_exif_photos, make_webdataset, make_jpeg
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

#: The OSV5M CSV header as published (Hugging Face osv5m/osv5m).
OSV5M_COLUMNS = [
    "id", "latitude", "longitude", "thumb_original_url", "country", "sequence", "captured_at",
    "lon_bin", "lat_bin", "cell", "region", "sub-region", "city", "land_cover", "road_index",
    "drive_side", "climate", "soil", "dist_sea", "quadtree_10_5000", "quadtree_10_25000",
    "quadtree_10_1000", "quadtree_10_50000", "quadtree_10_12500", "quadtree_10_500",
    "quadtree_10_2500", "unique_region", "unique_sub-region", "unique_city", "unique_country",
    "creator_username", "creator_id",
]

COUNTRIES = ["NA", "FR", "BR", "AU", "US", "ZA", "JP", "AR"]  # "NA" = Namibia: must not become NaN


def color_for(i: int) -> tuple[int, int, int]:
    """A distinct solid RGB colour for image number ``i``."""
    return ((37 * i + 20) % 256, (91 * i + 60) % 256, (53 * i + 100) % 256)


def coords_for(i: int) -> tuple[float, float]:
    """Deterministic (lat, lon) in degrees covering all four hemispheres (south/west are negative)."""
    lat = ((i * 23.713579 + 11.302468) % 170.0) - 85.0
    lon = ((i * 97.386421 + 33.135791) % 356.0) - 178.0
    return round(lat, 6), round(lon, 6)


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    v = abs(value)
    d = int(v)
    m = int((v - d) * 60)
    s = Fraction((v - d - m / 60) * 3600).limit_denominator(10_000)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(s.numerator, s.denominator)


def make_exif(gps: tuple[float, float] | None = None, orientation: int | None = None, extra: dict | None = None) -> Image.Exif:
    """An EXIF block with a GPS IFD (0x8825: tags 1-4 as N/S, DMS rationals, E/W) and/or orientation."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if extra:
        for tag, v in extra.items():
            exif[tag] = v
    if gps is not None:
        lat, lon = gps
        ifd = exif.get_ifd(0x8825)
        ifd[0] = b"\x02\x03\x00\x00"
        ifd[1] = "S" if lat < 0 else "N"
        ifd[2] = _dms(lat)
        ifd[3] = "W" if lon < 0 else "E"
        ifd[4] = _dms(lon)
    return exif


def encode_image(size: tuple[int, int], color, fmt: str = "JPEG", exif_gps=None, orientation=None, extra_exif=None) -> bytes:
    """Encoded bytes of a solid ``color`` image of ``size`` (w, h) in ``fmt``, with optional EXIF."""
    img = Image.new("RGB", tuple(size), tuple(color))
    buf = io.BytesIO()
    kw = {}
    if exif_gps is not None or orientation is not None or extra_exif:
        kw["exif"] = make_exif(exif_gps, orientation, extra_exif).tobytes()
    if fmt.upper() == "JPEG":
        kw["quality"] = 95
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def make_jpeg(path, size=(32, 24), color=(200, 30, 90), exif_gps=None, orientation=None, extra_exif=None) -> Path:
    """Write a solid-colour image to ``path`` (format from the suffix; JPEG by default).

    Args:
        exif_gps: ``(lat, lon)`` degrees to store in the EXIF GPS block (south/west as negative).
        orientation: EXIF orientation tag (1-8).
        extra_exif: more EXIF tags of IFD0 ``{tag: value}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(size, color, _FORMATS.get(path.suffix.lower(), "JPEG"), exif_gps, orientation, extra_exif))
    return path


def _osv5m_row(i: int, ident: int) -> dict:
    lat, lon = coords_for(i)
    c = COUNTRIES[i % len(COUNTRIES)]
    row = {
        "id": ident, "latitude": lat, "longitude": lon,
        "thumb_original_url": f"https://example.test/thumb/{ident}.jpg?sig=a,b",
        "country": c, "sequence": f"seq{i // 2:04d}", "captured_at": 1_600_000_000_000 + i,
        "lon_bin": i % 100, "lat_bin": (i * 3) % 100, "cell": f"({i % 100}, {(i * 3) % 100})",
        "region": f"Region {i}", "sub-region": f"Sub {i}", "city": f"City {i}",
        "land_cover": float(i % 12), "road_index": 0.5 * i, "drive_side": float(i % 2),
        "climate": float(i % 30), "soil": float(i % 14), "dist_sea": 1.25 * i,
        "quadtree_10_5000": i % 5, "quadtree_10_25000": i % 7, "quadtree_10_1000": i % 11,
        "quadtree_10_50000": i % 13, "quadtree_10_12500": i % 17, "quadtree_10_500": i % 19,
        "quadtree_10_2500": i % 23, "unique_region": f"Region {i}_{c}", "unique_sub-region": f"Sub {i}_Region {i}_{c}",
        "unique_city": f"City {i}_Sub {i}_Region {i}_{c}", "unique_country": c,
        "creator_username": f"user{i}", "creator_id": 10**15 + i,
    }
    return row


def make_osv5m_tree(
    root,
    n_rows: int = 9,
    split: str = "test",
    n_zips: int = 2,
    extracted: bool = True,
    missing_image: Sequence[int] = (-1,),
    nan_latitude: Sequence[int] = (-2,),
    size=(24, 16),
) -> pd.DataFrame:
    """An OSV5M tree: ``ROOT/<split>.csv`` with the published header, images under
    ``ROOT/images/<split>/``: ``00.zip`` (members ``<id>.jpg``), ``01.zip`` (members
    ``<sub>/<id>.jpg``) ... and, with ``extracted``, a folder ``<n_zips:02d>/<id>.jpg``.

    Rows are dealt round-robin to the zips and the folder. Rows in ``missing_image`` (indices,
    negative from the end) get no image; rows in ``nan_latitude`` get an empty latitude.

    Returns:
        The CSV content as a DataFrame (``id`` as written, int) plus ``color`` (RGB tuple),
        ``stored`` (``"00.zip"``, ..., ``"folder"`` or ``"missing"``) and ``member`` (path inside).
    """
    root = Path(root)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    missing = {i % n_rows for i in missing_image}
    nan_lat = {i % n_rows for i in nan_latitude}
    rows = [_osv5m_row(i, 4_000_000_000 + 7919 * i) for i in range(n_rows)]  # ids beyond int32
    for i in nan_lat:
        rows[i]["latitude"] = np.nan
    targets = [f"{z:02d}.zip" for z in range(n_zips)] + (["folder"] if extracted else [])
    zips = {t: zipfile.ZipFile(img_dir / t, "w") for t in targets if t.endswith(".zip")}
    stored, members, colors = [], [], []
    for i, r in enumerate(rows):
        colors.append(color_for(i))
        if i in missing:
            stored.append("missing")
            members.append(None)
            continue
        t = targets[i % len(targets)]
        data = encode_image(size, color_for(i))
        if t == "folder":
            member = f"{n_zips:02d}/{r['id']}.jpg"
            (img_dir / member).parent.mkdir(parents=True, exist_ok=True)
            (img_dir / member).write_bytes(data)
        else:
            member = f"{r['id']}.jpg" if t == "00.zip" else f"{t[:2]}/{r['id']}.jpg"
            zips[t].writestr(member, data)
        stored.append(t)
        members.append(member)
    for z in zips.values():
        z.close()
    df = pd.DataFrame(rows, columns=OSV5M_COLUMNS)
    df.to_csv(root / f"{split}.csv", index=False)
    truth = df.copy()
    truth["color"] = colors
    truth["stored"] = stored
    truth["member"] = members
    return truth


def make_folder_dataset(
    root,
    n: int = 6,
    lat_name: str = "latitude",
    lon_name: str = "longitude",
    by: str = "path",
    csv_name: str | None = "metadata.csv",
    fmt: str = ".png",
    subdirs: bool = True,
    absolute_paths: bool = False,
    missing_image: Sequence[int] = (),
    size=(20, 12),
) -> pd.DataFrame:
    """A folder of images plus a CSV.

    Args:
        by: ``"path"`` — a ``path`` column (relative, or absolute with ``absolute_paths``) and no id
            column; ``"id"`` — an ``id`` column, images named ``<id><fmt>`` (in ``sub/`` for odd rows
            when ``subdirs``, else at the root).
        csv_name: where to write the CSV inside ``root`` (``None``: return the frame, write nothing).
        missing_image: row indices whose image file is not written.

    Returns:
        The CSV content plus ``id`` (expected id), ``file`` (absolute image path) and ``color``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    missing = {i % n for i in missing_image} if n else set()
    recs = []
    for i in range(n):
        lat, lon = coords_for(100 + i)
        ident = f"img_{i:03d}"
        rel = (f"sub{i % 2}/" if subdirs and i % 2 else "") + ident + fmt
        f = root / rel
        if i not in missing:
            make_jpeg(f, size, color_for(100 + i))
        rec = {"id": ident, "path": str(f) if absolute_paths else rel, lat_name: lat, lon_name: lon,
               "label": f"scene {i}", "score": 0.25 * i, "country": COUNTRIES[i % len(COUNTRIES)]}
        recs.append(rec)
    df = pd.DataFrame(recs)
    written = df.drop(columns=["path"] if by == "id" else ["id"])
    if csv_name is not None:
        written.to_csv(root / csv_name, index=False)
    df["file"] = [str(root / ((f"sub{i % 2}/" if subdirs and i % 2 else "") + f"img_{i:03d}{fmt}")) for i in range(n)]
    df["color"] = [color_for(100 + i) for i in range(n)]
    return df


def make_exif_photos(root, n_gps: int = 4, n_without: int = 1, size=(24, 16)) -> pd.DataFrame:
    """Photos with EXIF GPS (JPEG, in nested folders, one PNG) and ``n_without`` JPEGs without GPS.

    Returns:
        ``id`` (path relative to ``root``), ``lat``, ``lon`` (NaN without GPS), ``has_gps``,
        ``color``, ``camera_model``, ``captured_at``.
    """
    root = Path(root)
    recs = []
    for i in range(n_gps + n_without):
        has = i < n_gps
        lat, lon = coords_for(200 + i) if has else (np.nan, np.nan)
        rel = ("trip/day1/" if i % 2 else "") + (f"photo_{i:02d}" + (".png" if has and i == n_gps - 1 else ".jpg"))
        model = f"Cam {i}"
        when = f"2023:05:{i + 1:02d} 10:00:00"
        exif = make_exif((lat, lon) if has else None, extra={0x0110: model})
        exif.get_ifd(0x8769)[0x9003] = when
        img = Image.new("RGB", size, color_for(200 + i))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, exif=exif.tobytes(), **({"quality": 95} if rel.endswith(".jpg") else {}))
        recs.append({"id": rel, "lat": lat, "lon": lon, "has_gps": has, "color": color_for(200 + i),
                     "camera_model": model, "captured_at": when})
    return pd.DataFrame(recs)


def make_webdataset(
    path,
    n: int = 5,
    lat_key: str = "lat",
    lon_key: str = "lon",
    with_id: bool = True,
    orphan_image: bool = True,
    size=(20, 12),
    start: int = 0,
) -> pd.DataFrame:
    """One uncompressed tar shard at ``path`` with samples ``<key>.jpg`` + ``<key>.json``.

    The JSON holds ``lat_key``/``lon_key``, ``country``, ``tags`` (a list) and, with ``with_id``,
    ``id``. With ``orphan_image`` a last sample has an image but no JSON.

    Returns:
        ``key``, ``id`` (expected id), ``lat``, ``lon``, ``country``, ``tags``, ``color``, ``member``
        and ``has_json``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = []

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for j in range(n + int(orphan_image)):
            i = start + j
            key = f"s{i:06d}"
            has_json = j < n
            lat, lon = coords_for(300 + i) if has_json else (np.nan, np.nan)
            member = f"{key}.jpg"
            add(tf, member, encode_image(size, color_for(300 + i)))
            meta = {lat_key: lat, lon_key: lon, "country": COUNTRIES[i % len(COUNTRIES)], "tags": ["a", str(i)]}
            if with_id:
                meta["id"] = f"wds-{i}"
            if has_json:
                add(tf, f"{key}.json", json.dumps(meta).encode())
            recs.append({"key": key, "id": f"wds-{i}" if with_id and has_json else key, "lat": lat, "lon": lon,
                         "country": meta["country"], "tags": meta["tags"], "color": color_for(300 + i),
                         "member": member, "has_json": has_json})
    return pd.DataFrame(recs)


def mean_color(img: Image.Image) -> tuple[float, float, float]:
    """Mean RGB of a PIL image."""
    a = np.asarray(img.convert("RGB"), dtype=np.float64)
    return tuple(a.reshape(-1, 3).mean(axis=0))


def assert_color(img: Image.Image, color, tol: float = 0.0) -> None:
    """Every pixel of ``img`` within ``tol`` levels of ``color`` (0: pixel-equal)."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    diff = np.abs(a - np.asarray(color, dtype=np.int16)).max()
    assert diff <= tol, f"image differs from {color} by up to {diff} levels (> {tol})"
