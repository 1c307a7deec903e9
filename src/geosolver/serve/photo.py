"""The web app's photos: an upload checked and decoded through :mod:`geosolver.images` (the one
decode path: header first, bomb guard, JPEG draft reduction, the server's pixel budget), and a Play
round's photo re-encoded for showing.

Memory: a small file can declare a huge image (a 0.5 MB PNG of 13000x13000 px decodes to 0.5 GB of
RGB, several times that while converting), so the server passes its own pixel budget
(``ServeOptions.max_pixels``) to :func:`geosolver.images.decode`, checked from the header against
the pixels that would actually be decoded, and drops large decoded images with
:func:`release_memory_if_large`.
"""

from __future__ import annotations

import ctypes
import gc
import io
import math
import secrets
from dataclasses import dataclass

import numpy as np
from PIL import Image

from geosolver.errors import ImageReadError, NotAnImageError, PhotoError, PixelLimitError
from geosolver.images import decode, exif_gps, open_header

#: Image formats the app accepts (PIL format names; MPO is what many phone cameras write).
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Longest side, in pixels, of a Play round's photo.
MAX_PHOTO_SIDE = 1600
#: JPEG qualities a Play photo is re-encoded at (one drawn per showing).
PHOTO_QUALITIES = range(80, 91)
#: Most pixels trimmed from each edge of a Play photo per showing (drawn at random).
PHOTO_MAX_TRIM = 3
#: Formats PIL can decode reduced (JPEG draft): their budget is checked at the reduced size, in decode.
_DRAFT_FORMATS = ("JPEG", "MPO")
#: Decoded images at least this large trigger a ``gc.collect()`` once they are dropped.
_GC_PIXELS = 4_000_000


@dataclass
class Photo:
    """A decoded upload.

    Attributes:
        image: upright RGB image (possibly reduced by JPEG draft decoding, see ``min_side``);
            ``None`` once the app has dropped it after preprocessing.
        format: PIL format name (``JPEG``, ``PNG``, ``WEBP`` ...).
        gps: EXIF GPS ``(lat, lon)`` in degrees, or ``None``.
        width, height: the photo's full upright size in pixels.
    """

    image: Image.Image | None
    format: str
    gps: tuple[float, float] | None
    width: int
    height: int


def decode_photo(
    data: bytes, name: str = "upload", min_side: int | None = None, max_pixels: int | None = None, fit_long_side: int | None = None,
) -> Photo:
    """Check and decode an uploaded photo.

    The header is read first (format, declared size) so that unsupported formats and
    decompression bombs are refused before any pixel is decoded.

    Args:
        data: the encoded bytes.
        name: how to call the upload in messages (the client's file name).
        min_side: JPEGs may be decoded reduced while keeping the shorter side at least this many
            pixels (the encoder's ``min_side``: the same decoding the embedding pipeline uses).
        max_pixels: most pixels to decode (the server's budget, checked from the header against
            the size that would be decoded: a JPEG's draft-reduced size); ``None``: only the global
            :data:`~geosolver.images.MAX_PIXELS` guard.
        fit_long_side: instead of ``min_side``: the photo will be shown at most this many pixels
            on its long side, so JPEGs may be decoded reduced as far as that allows.

    Returns:
        The :class:`Photo` (image turned upright by its EXIF orientation).

    Raises:
        PhotoError: 400 empty; 415 not an image / unsupported format; 422 decompression bomb,
            truncated or undecodable data.
    """
    if not data:
        raise PhotoError(400, f"{name}: the upload is empty (0 bytes)")
    try:
        probe = open_header(data)
    except NotAnImageError:
        raise PhotoError(415, f"{name}: not an image format Geosolver can read (send JPEG, PNG or WebP)") from None
    except ImageReadError as e:
        raise PhotoError(422, f"{name}: {_reason(e)}") from None
    fmt = str(probe.format or "")
    if fmt not in ALLOWED_FORMATS:
        raise PhotoError(415, f"{name}: image format {fmt or 'unknown'} is not accepted (send JPEG, PNG or WebP)")
    w, h = probe.size
    if fit_long_side and min_side is None and max(w, h) > fit_long_side and min(w, h) > 0:
        min_side = max(1, math.ceil(fit_long_side * min(w, h) / max(w, h)))
    if max_pixels and fmt not in _DRAFT_FORMATS and w * h > max_pixels:
        # before the EXIF read: PIL loads a whole PNG to find an EXIF chunk after its pixel data
        raise _over_budget(name, w, h, (w, h), max_pixels)
    try:
        gps = exif_gps(probe)
        orientation = int(probe.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not lose the photo
        gps, orientation = None, 1
    try:
        img = decode(probe, min_side=min_side, max_pixels=max_pixels, name=name)
    except PixelLimitError as e:
        raise _over_budget(name, w, h, e.decoded, e.limit) from None
    except ImageReadError as e:
        raise PhotoError(422, f"{name}: the image data is truncated or corrupt ({_reason(e)})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w  # turned by 90 degrees (decode applied the EXIF orientation)
    return Photo(img, fmt, gps, w, h)


def _over_budget(name: str, w: int, h: int, decoded: tuple[int, int], limit: int) -> PhotoError:
    """422 for a photo over the server's pixel budget (``decoded``: the size it would decode at)."""
    dw, dh = decoded
    reduced = "" if (dw, dh) == (w, h) else f" (decoded reduced: {dw}x{dh} = {dw * dh:,})"
    return PhotoError(
        422,
        f"{name}: {w}x{h} = {w * h:,} pixels{reduced} is more than this server's limit of {limit:,} pixels "
        f"(geosolver serve --max-pixels); refused before decoding as a possible decompression bomb: send a smaller photo",
    )


def _reason(e: ImageReadError) -> str:
    """The cause in an :mod:`geosolver.images` message, without its ``cannot decode SOURCE:`` lead."""
    msg = str(e)
    return msg.split(": ", 1)[1] if msg.startswith("cannot decode ") and ": " in msg else msg


def render_photo(data: bytes, name: str, max_pixels: int | None, max_side: int = MAX_PHOTO_SIDE, rng=None) -> bytes:
    """A Play photo as a fresh JPEG: upright, at most ``max_side`` px on the long side, no metadata,
    and different bytes on every showing.

    Each call trims 0-:data:`PHOTO_MAX_TRIM` pixels from each edge and draws the JPEG quality from
    :data:`PHOTO_QUALITIES` (``rng``: a ``numpy.random.Generator``, default a fresh secret seed), so
    the bytes -- and any hash of them -- differ between showings of the same photo (a hash would
    otherwise identify a photo seen before, with its answer).

    Raises:
        PhotoError: the photo cannot be used.
    """
    rng = rng if rng is not None else np.random.default_rng(secrets.randbits(64))
    photo = decode_photo(data, name, max_pixels=max_pixels, fit_long_side=max_side)
    img = photo.image
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    w, h = img.size
    left, top, right, bottom = (int(rng.integers(0, PHOTO_MAX_TRIM + 1)) if side > 2 * PHOTO_MAX_TRIM + 1 else 0 for side in (w, h, w, h))
    # a new image carries none of the source's info (EXIF, XMP, ICC, comments)
    clean = Image.new("RGB", (w - left - right, h - top - bottom))
    clean.paste(img.crop((left, top, w - right, h - bottom)))
    img.close()
    buf = io.BytesIO()
    clean.save(buf, format="JPEG", quality=int(rng.choice(PHOTO_QUALITIES)), optimize=True)
    photo.image = None
    del img
    release_memory_if_large(photo.width, photo.height)
    return buf.getvalue()


def _malloc_trim():
    """glibc's ``malloc_trim`` (``None`` elsewhere)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory_if_large(width: int, height: int) -> None:
    """After dropping a decoded image of ``width`` x ``height``: hand its memory back to the OS when
    it was large (at least ``_GC_PIXELS``).

    Freeing is not enough: each threadpool thread allocates from its own glibc malloc arena and
    the freed blocks stay in those arenas (measured: four 36 Mpx uploads left the server ~1.4 GB
    larger). ``malloc_trim(0)`` releases the free pages of every arena.
    """
    if width * height >= _GC_PIXELS:
        gc.collect()
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)
