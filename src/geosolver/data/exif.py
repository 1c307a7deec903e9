"""A folder of photos whose coordinates are in their EXIF GPS block (phone / camera photos).

Photos are found by walking the folder recursively; only the file headers are parsed (PIL opens
lazily), pixels are never decoded. The id is the path relative to the root (``/``-separated).
Photos without GPS are listed as skipped with the reason ``"no EXIF GPS"``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from geosolver.data.common import IMAGE_EXTENSIONS, DatasetError, finish_table, skipped_frame, walk_images
from geosolver.images import exif_gps
from geosolver.progress import tqdm

log = logging.getLogger("geosolver.data.exif")

REASON_NO_GPS = "no EXIF GPS"
#: EXIF tags passed through as metadata: (column, IFD, tag). 0x8769 is the Exif sub-IFD.
EXIF_COLUMNS = (
    ("captured_at", 0x8769, 0x9003),  # DateTimeOriginal, "YYYY:MM:DD HH:MM:SS"
    ("camera_make", None, 0x010F),
    ("camera_model", None, 0x0110),
)


def read_photo_exif(path: str) -> tuple[tuple[float, float] | None, dict[str, str | None]]:
    """GPS ``(lat, lon)`` in degrees (or ``None``) and the :data:`EXIF_COLUMNS` of one photo.

    Raises:
        OSError / UnidentifiedImageError: the file is not a readable image.
    """
    with Image.open(path) as im:  # lazy: reads the header, not the pixels
        gps = exif_gps(im)
        meta: dict[str, str | None] = {}
        try:
            exif = im.getexif()
        except Exception:  # a broken EXIF block: no metadata, keep the photo
            exif = None
        for col, ifd, tag in EXIF_COLUMNS:
            v = None
            if exif is not None:
                try:
                    v = (exif.get_ifd(ifd) if ifd else exif).get(tag)
                except Exception:
                    v = None
            meta[col] = str(v).strip("\x00 ").strip() if v is not None else None
    return gps, meta


def read_exif(
    root: str | os.PathLike,
    split: str | None = None,
    csv: str | os.PathLike | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """Read every photo under ``root`` that carries EXIF GPS coordinates.

    Args:
        root: the photo folder (walked recursively; extensions :data:`IMAGE_EXTENSIONS`).
        split: if given, read ``ROOT/<split>`` instead.
        csv: not used by this reader (must be ``None``).
        limit: stop after ``limit`` photos with GPS.

    Returns:
        The reader table: ``id`` (path relative to the root), ``source`` (the path), ``lat``, ``lon``,
        ``captured_at``, ``camera_make``, ``camera_model``; ``attrs["skipped"]`` lists photos without
        GPS or unreadable files.
    """
    root = Path(os.path.abspath(root))  # absolute sources: valid from any working directory
    if csv is not None:
        raise DatasetError("the exif reader takes coordinates from the photos; it does not read a CSV (use kind='folder')")
    folder = root / split if split else root
    if not folder.is_dir():
        raise DatasetError(f"photo folder is not a directory: {folder}")
    walk_skipped: list[tuple[str, str]] = []  # symlink loops, entries that cannot be examined
    paths = walk_images(folder, IMAGE_EXTENSIONS, skipped=walk_skipped)
    if not paths:
        raise DatasetError(f"{folder}: no image files found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    ids, lat, lon, reasons, metas = [], [], [], [], []
    n_ok = 0
    for p in tqdm(paths, desc="reading EXIF", unit="photo", disable=len(paths) < 500):
        if limit is not None and n_ok >= limit:
            break
        ids.append(Path(os.path.relpath(p, folder)).as_posix())
        try:
            gps, meta = read_photo_exif(p)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            gps, meta, reason = None, {}, f"unreadable image: {type(e).__name__}: {e}"
        else:
            reason = None if gps else REASON_NO_GPS
        n_ok += gps is not None
        lat.append(gps[0] if gps else np.nan)
        lon.append(gps[1] if gps else np.nan)
        reasons.append(reason)
        metas.append(meta)
    n_no_gps = sum(r == REASON_NO_GPS for r in reasons)
    if n_no_gps:
        log.warning("%s: %d of %d photo(s) have no EXIF GPS and are skipped", folder, n_no_gps, len(reasons))
    meta_df = pd.DataFrame(metas, columns=[c for c, _, _ in EXIF_COLUMNS]).astype("str")
    dataset = {"kind": "exif", "root": str(root), "split": split, "csv": None}
    return finish_table(ids, paths[: len(ids)], lat, lon, meta_df, reasons, dataset, limit=limit,
                        extra_skipped=skipped_frame(walk_skipped, folder))
