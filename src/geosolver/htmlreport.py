"""Tiny helpers for self-contained HTML reports (images inlined as base64, no external assets)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#1d2430;line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #dde3ea;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.84em;line-height:1.3}th,td{border:1px solid #d5dbe3;padding:.25em .45em;text-align:right}
th{background:#f3f6f9;vertical-align:bottom;font-weight:600}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #e3e8ee;border-radius:4px;margin:.4em 0}
.note{background:#fff8e6;border-left:4px solid #f0b400;padding:.6em 1em;margin:1em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:1em}
.scroll{overflow-x:auto}td{white-space:nowrap}td:first-child{white-space:normal;overflow-wrap:anywhere;min-width:8em}
code{background:#f3f5f7;padding:.1em .3em;border-radius:3px}
"""


def img_tag(path: str | os.PathLike, alt: str = "") -> str:
    """An ``<img>`` with the PNG at ``path`` inlined (base64); empty string if the file is missing."""
    p = Path(path)
    if not p.exists():
        return ""
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(header: Sequence[str], rows: Iterable[Sequence[object]], titles: Sequence[str] | None = None) -> str:
    """A table in a horizontally scrolling box (a last resort: reports keep their tables narrow
    enough to fit); ``titles``: hover text of each header cell."""
    titles = list(titles) if titles is not None else [""] * len(header)
    head = "".join(
        f"<th title='{html.escape(str(t), quote=True)}'>{html.escape(str(h))}</th>" if t else f"<th>{html.escape(str(h))}</th>"
        for h, t in zip(header, titles)
    )
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def markdown_table_html(md: str, headers: Mapping[str, str] | None = None) -> str:
    """Render a simple pipe-table (as written by ``evaluate.markdown_table``) to HTML.

    ``headers``: shorter display names for header cells (the original name becomes the hover text)."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{html.escape(md)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    headers = headers or {}
    shown = [headers.get(h, h) for h in cells[0]]
    return table_html(shown, cells[2:], titles=[h if headers.get(h, h) != h else "" for h in cells[0]])


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )
