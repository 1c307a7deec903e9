"""What ``geosolver study`` checks before it spends anything: the dataset root, the two encoders, the
output folder — in seconds, reading headers and listings only (no image, no weights, no write).

Each check raises a :class:`~geosolver.errors.UserError` (one line naming what is wrong) or returns
what the estimate needs (:class:`EncoderCheck`: where the encoder comes from, its size class, the
bytes still to download).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from geosolver.data.common import find_column
from geosolver.data.osv5m import split_csv
from geosolver.errors import GeosolverError, UserError
import csv
from geosolver.encoders import ENCODER_ALIASES
from geosolver.hub import HubError, cached_model, list_repo, model_repo_id, model_selection
from geosolver.rundir import check_out as check_run_dir

SPLITS = ("test", "train")

#: ASSUMED cost of one image per encoder size class — the estimate's basis, not measurements:
#: images/s embedding and training on one GPU (``cuda``) or a few CPU cores (``cpu``), the
#: embedding's dimension (store bytes) and a full checkpoint's bytes (download, fine-tuned copy).
#: ViT-L/14-336 (StreetCLIP's size) is the reference; the others scale with their tokens × width².
ENCODER_COSTS: dict[str, dict] = {
    "ViT-L/14-336": {"embed": {"cuda": 400.0, "cpu": 3.0}, "train": {"cuda": 120.0, "cpu": 1.0}, "dim": 768, "bytes": 1.71e9},
    "ViT-L/14": {"embed": {"cuda": 900.0, "cpu": 7.0}, "train": {"cuda": 270.0, "cpu": 2.2}, "dim": 768, "bytes": 1.71e9},
    "ViT-B/16": {"embed": {"cuda": 2000.0, "cpu": 20.0}, "train": {"cuda": 600.0, "cpu": 6.0}, "dim": 512, "bytes": 0.6e9},
    "ViT-B/32": {"embed": {"cuda": 4000.0, "cpu": 60.0}, "train": {"cuda": 1200.0, "cpu": 20.0}, "dim": 512, "bytes": 0.6e9},
    "EfficientNet-Lite": {"embed": {"cuda": 3000.0, "cpu": 80.0}, "train": {"cuda": 1000.0, "cpu": 25.0}, "dim": 1280, "bytes": 2.5e7},
    "histogram": {"embed": {"cuda": 300.0, "cpu": 300.0}, "train": {"cuda": 300.0, "cpu": 300.0}, "dim": 512, "bytes": 0.0},
}
#: The class assumed for a CLIP whose size cannot be read without downloading it.
UNKNOWN_CLASS = "ViT-L/14-336"
#: Aliases whose size is known without reading anything.
_ALIAS_CLASS = {"streetclip": "ViT-L/14-336", "clip-vit-l-14-336": "ViT-L/14-336", "clip-vit-l-14": "ViT-L/14",
                "clip-vit-b-32": "ViT-B/32", "efficientnet-lite0": "EfficientNet-Lite", "efficientnet-lite2": "EfficientNet-Lite",
                "histogram": "histogram"}
_EFFNET_AT = re.compile(r"efficientnet-lite[02]@\d+")
#: Bytes of a CSV header line read at most (a header longer than this is not OSV5M's).
_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class EncoderCheck:
    """An encoder the study can load. ``source``: ``builtin``, ``local`` (a directory), ``cached``
    (a hub model in the local cache) or ``hub`` (to download: ``download_bytes``)."""

    name: str
    source: str
    size_class: str
    download_bytes: float = 0.0


def check_root(root: str | os.PathLike) -> dict[str, Path]:
    """Each split's CSV under the OSV5M ``root`` (either layout), its header holding an id and the two
    coordinates, and a non-empty ``images/<split>/``; returns split → CSV path."""
    r = Path(root).expanduser()
    if not r.exists():
        raise UserError(f"--root {root}: does not exist (an OSV5M root: `geosolver download osv5m --root DIR --split all`)")
    if not r.is_dir():
        raise UserError(f"--root {root}: is not a directory")
    csvs = {}
    for split in SPLITS:
        try:
            csv = split_csv(r, split)
        except GeosolverError as e:
            raise UserError(f"--root {root}: the study needs both splits; {e}") from None
        header = csv_header(csv)
        for what, names in (("id", ("id",)), ("latitude", ("latitude", "lat")), ("longitude", ("longitude", "lon"))):
            if find_column(header, names) is None:
                raise UserError(f"{csv}: no {what} column in its header (found: {', '.join(header[:8])}"
                                 f"{' ...' if len(header) > 8 else ''})")
        images = r / "images" / split
        if not images.is_dir():
            raise UserError(f"--root {root}: {images} does not exist (the {split} split's zip shards or extracted images)")
        with os.scandir(images) as it:
            if next(it, None) is None:
                raise UserError(f"--root {root}: {images} is empty (the {split} split's zip shards or extracted images)")
        csvs[split] = csv
    return csvs


def csv_header(path: Path) -> list[str]:
    """The column names on a CSV's first line (UTF-8, UTF-16 with its mark, else latin-1)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    for enc in ("utf-16",) if head.startswith((b"\xff\xfe", b"\xfe\xff")) else ("utf-8-sig", "latin-1"):
        try:
            text = head.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    line = text.splitlines()[0] if text.strip() else ""
    if not line.strip() or "\x00" in line:
        raise UserError(f"{path}: not a CSV file with a header line")
    return [c.strip() for c in next(csv.reader([line]))]


def count_rows(path: Path) -> int:
    """Data lines of a CSV (newlines minus the header), read in 16 MB blocks."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return max(0, n - 1 + (last != b"\n"))


def check_encoder(name: str, option: str, timeout: float = 10.0) -> EncoderCheck:
    """``name`` loads without a surprise: an offline encoder, a model directory, a hub model in the
    local cache (no request), else one the hub lists (its file sizes; no weights downloaded)."""
    key = name.strip()
    alias = ENCODER_ALIASES.get(key.lower())
    if (alias is not None and "/" not in alias) or _EFFNET_AT.fullmatch(key.lower()):
        return EncoderCheck(key, "builtin", _ALIAS_CLASS.get(key.lower(), "EfficientNet-Lite"))
    path = Path(key).expanduser()
    if alias is None and path.exists():
        if not path.is_dir():
            raise UserError(f"{option} {name}: is a file; expected a model directory")
        if not ((path / "config.json").is_file() or (path / "geosolver_encoder.json").is_file()):
            raise UserError(f"{option} {name}: neither config.json (a transformers CLIP) nor geosolver_encoder.json in it")
        return EncoderCheck(key, "local", _clip_class(path / "config.json"))
    if alias is None and (key.startswith((".", "/", "~")) or key.count("/") != 1):
        raise UserError(f"{option} {name}: does not exist (not an alias: {', '.join(sorted(ENCODER_ALIASES))}; "
                         "not a model directory; not a hub id org/name)")
    try:
        repo_id = model_repo_id(key)
    except HubError as e:
        raise UserError(f"{option}: {e}") from None
    size_class = _ALIAS_CLASS.get(key.lower())
    cached = cached_model(repo_id)
    if cached is not None:
        return EncoderCheck(key, "cached", size_class or _clip_class(cached / "config.json"))
    hint = f"Or fetch it elsewhere: `geosolver download model {key} --local-dir DIR`, copy DIR here and pass {option} DIR."
    try:
        listing = list_repo(repo_id, "model", timeout=timeout, hint=hint)
    except HubError as e:
        raise UserError(f"{option} {name}: not in the local cache and {e}") from None
    need = sum(f.size for f in model_selection(listing))
    return EncoderCheck(key, "hub", size_class or UNKNOWN_CLASS, float(need))


def _clip_class(config: Path) -> str:
    """The size class of a CLIP from its ``config.json`` (vision width, patch, input side)."""
    try:
        vc = json.loads(config.read_text()).get("vision_config") or {}
        hidden, patch, side = int(vc.get("hidden_size", 1024)), int(vc.get("patch_size", 14)), int(vc.get("image_size", 336))
    except (OSError, ValueError, TypeError, AttributeError):
        return UNKNOWN_CLASS
    if hidden >= 1024:
        return "ViT-L/14-336" if side >= 336 else "ViT-L/14"
    return "ViT-B/32" if patch >= 32 else "ViT-B/16"


def check_out(out: str | os.PathLike) -> None:
    """``out`` is new, empty, or an earlier study's folder: the run-directory rule
    (:func:`geosolver.rundir.check_out`, ``--overwrite`` included), checked before anything is written."""
    check_run_dir(Path(out).expanduser(), "study")
