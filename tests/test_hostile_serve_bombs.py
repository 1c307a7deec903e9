"""A photo over the server's pixel budget is refused from its header: no pixel is decoded first.

PIL's ``PngImageFile.getexif()`` loads the whole image to look for an EXIF chunk after the pixel
data, so reading EXIF before the budget check let four concurrent 169 Mpx PNG uploads grow the
server by 2.6 GB before each was refused (``benchmarks/serve_memory.py``)."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from geosolver.errors import PhotoError
from geosolver.serve.photo import decode_photo


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (40, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png_loads(monkeypatch):
    """Counts PNG pixel decodes (``PngImageFile.load``)."""
    calls = []
    real = PngImagePlugin.PngImageFile.load

    def spy(self, *a, **k):
        calls.append(self.size)
        return real(self, *a, **k)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", spy)
    return calls


def test_a_png_over_the_pixel_budget_is_refused_before_any_pixel_is_decoded(png_loads):
    with pytest.raises(PhotoError) as e:
        decode_photo(_png(120, 100), "big.png", max_pixels=10_000)  # 12 000 px > 10 000
    assert e.value.status == 422 and "12,000 pixels" in str(e.value) and "--max-pixels" in str(e.value)
    assert png_loads == []


def test_a_png_within_the_budget_is_decoded(png_loads):
    photo = decode_photo(_png(100, 100), "ok.png", max_pixels=10_000)  # exactly at the budget
    assert photo.image.size == (100, 100) and photo.image.getpixel((5, 5)) == (40, 120, 200)
    assert png_loads  # decoded once it passed the check
