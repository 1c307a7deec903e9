"""Reading an uploaded photo from an HTTP request: bounded in size, kept in memory.

Starlette's own form parser spools file parts above 1 MB to temporary files on disk and reads the
whole body before the endpoint can look at it. Here the body is read chunk by chunk from the ASGI
stream and fed to ``python_multipart``'s streaming parser; reading stops as soon as the byte count
passes the limit (a declared ``Content-Length`` above the limit is refused before reading
anything). Nothing touches the disk.

Accepted request bodies:

* ``multipart/form-data`` with the photo in the field ``file`` (plus optional text fields);
* a raw image body (``Content-Type: image/*`` or ``application/octet-stream``), e.g.
  ``curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from geosolver.errors import UploadError

#: Bytes of multipart framing and text fields tolerated on top of the photo size limit.
FORM_OVERHEAD_BYTES = 64 * 1024
#: Most parts (file + text fields) one form may carry.
MAX_PARTS = 16
#: Largest text field value kept (bytes).
MAX_FIELD_BYTES = 1024


@dataclass
class Upload:
    """What a request carried.

    Attributes:
        data: the photo's encoded bytes (may be empty: the caller decides what that means).
        filename: the client's file name, or ``""``.
        content_type: the part's (or body's) declared content type, or ``""``.
        fields: text form fields (``name -> value``), e.g. ``k``, ``strategy``.
    """

    data: bytes
    filename: str = ""
    content_type: str = ""
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(limit: int) -> UploadError:
    return UploadError(413, f"upload too large: the limit is {limit / 1e6:g} MB ({limit} bytes)")


async def _bounded_chunks(stream: AsyncIterator[bytes], budget: int, limit: int) -> AsyncIterator[bytes]:
    """Yield the stream's chunks; raise 413 as soon as more than ``budget`` bytes arrived."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > budget:
            raise _too_large(limit)
        if chunk:
            yield chunk


async def read_upload(
    headers: "dict[str, str] | object",
    stream: AsyncIterator[bytes],
    max_bytes: int,
    file_field: str = "file",
) -> Upload:
    """Read the photo from a request body, refusing more than ``max_bytes`` of photo.

    Args:
        headers: the request headers (a mapping with case-insensitive ``get``).
        stream: the body as an async iterator of byte chunks (``request.stream()``).
        max_bytes: largest photo accepted, in bytes.
        file_field: name of the multipart field that carries the photo.

    Returns:
        The :class:`Upload`.

    Raises:
        UploadError: 413 too large; 415 unsupported content type; 400 malformed multipart body;
            422 no ``file_field`` part in the form.
    """
    ctype_header = headers.get("content-type") or ""
    ctype, params = parse_options_header(ctype_header)
    ctype_s = ctype.decode("latin-1").lower() if isinstance(ctype, bytes) else str(ctype).lower()
    is_multipart = ctype_s == "multipart/form-data"
    budget = max_bytes + (FORM_OVERHEAD_BYTES if is_multipart else 0)
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > budget:
                raise _too_large(max_bytes)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {declared!r}") from None

    chunks = _bounded_chunks(stream, budget, max_bytes)
    if not is_multipart:
        if not (ctype_s.startswith("image/") or ctype_s in ("application/octet-stream", "")):
            raise UploadError(
                415,
                f"unsupported request content type {ctype_s!r}: send multipart/form-data with the photo "
                f"in the field {file_field!r}, or the raw image bytes with Content-Type image/*",
            )
        buf = bytearray()
        async for c in chunks:
            buf += c
        return Upload(bytes(buf), "", ctype_s)

    boundary = params.get(b"boundary") if isinstance(params, dict) else None
    if not boundary:
        raise UploadError(400, "multipart/form-data request without a boundary parameter")
    return await _parse_multipart(chunks, boundary, max_bytes, file_field)


class _FormParts:
    """The parts of a multipart body, collected from ``MultipartParser``'s callbacks (:meth:`callbacks`).

    Each part is ``{"headers": {...}, "data": bytearray, "name": str, "filename": str}``; the
    ``file_field`` part may hold up to ``max_bytes``, any other part :data:`MAX_FIELD_BYTES`.
    """

    def __init__(self, file_field: str, max_bytes: int) -> None:
        self.file_field, self.max_bytes = file_field, max_bytes
        self.parts: list[dict] = []
        self.ended = False
        self._header_field = self._header_value = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise UploadError(400, f"too many form parts (more than {MAX_PARTS})")
        self.parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = self._header_field.decode("latin-1").strip().lower()
        self.parts[-1]["headers"][name] = self._header_value.decode("latin-1").strip()
        self._header_field = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, disp = parse_options_header(self.parts[-1]["headers"].get("content-disposition", ""))
        self.parts[-1]["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        self.parts[-1]["filename"] = disp.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part["data"] += data[start:end]
        if part.get("name") == self.file_field:
            if len(part["data"]) > self.max_bytes:
                raise _too_large(self.max_bytes)
        elif len(part["data"]) > MAX_FIELD_BYTES:
            raise self._field_too_long(part)

    def _field_too_long(self, part: dict) -> UploadError:
        name, file_field = part.get("name"), self.file_field
        if part.get("filename") or not part["headers"].get("content-type", "text/plain").lower().startswith("text/"):
            # a file in another field (e.g. 'photo', 'image'): say where the photo goes
            return UploadError(
                422, f"no {file_field!r} field in the form: a file was sent in the field {name!r}; send the photo in the field {file_field!r}"
            )
        return UploadError(
            400, f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes (text fields only; send the photo in the field {file_field!r})"
        )

    def on_end(self) -> None:
        self.ended = True

    def upload(self) -> Upload:
        """The photo part and the text fields (422 when there is no ``file_field`` part)."""
        file_field = self.file_field
        files = [p for p in self.parts if p.get("name") == file_field]
        if not files:
            names = ", ".join(repr(p.get("name")) for p in self.parts) or "none"
            raise UploadError(422, f"no {file_field!r} field in the form (fields sent: {names}); put the photo in {file_field!r}")
        f = files[0]
        fields = {p["name"]: bytes(p["data"]).decode("utf-8", "replace") for p in self.parts if p.get("name") and p.get("name") != file_field}
        return Upload(bytes(f["data"]), f.get("filename", ""), f["headers"].get("content-type", ""), fields)


async def _parse_multipart(chunks: AsyncIterator[bytes], boundary: bytes, max_bytes: int, file_field: str) -> Upload:
    form = _FormParts(file_field, max_bytes)
    try:
        parser = MultipartParser(boundary, form.callbacks())
        async for c in chunks:
            parser.write(c)
        parser.finalize()
    except MultipartParseError as e:
        raise UploadError(400, f"malformed multipart body: {e}") from None
    if not form.ended:
        raise UploadError(400, "malformed multipart body: it ends before the closing boundary")
    return form.upload()
