"""Render a report (sections of claims, tables and figures) as one self-contained HTML page.

Figures are embedded as base64 PNG so the page can be mailed or archived as a single file.

Layout: each section's figures sit in a two-column CSS grid (``grid-auto-flow: dense``, so a
narrow figure after a wide one fills the hole beside the previous narrow one). The figure code
draws narrow figures about :data:`COLUMN_INCHES` wide and multi-panel figures about twice that,
with text of at least 9 pt; a figure drawn wider than :data:`WIDE_INCHES` (read from the PNG's
``pHYs`` dpi) spans both columns. Every image is shown at ``width: 100%; height: auto`` of its
cell, so at the page's width (1100 CSS px ≈ 11.5 in at 96 px/in) a figure appears at about its
drawn size and its point sizes hold.
"""

from __future__ import annotations

import base64
import html
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Claim", "Section", "render_html", "png_inches", "is_wide", "COLUMN_INCHES", "WIDE_INCHES"]

#: Width (inches at 96 CSS px/in) of one grid column at the page's full width: (1100 px − 16 px gap) / 2.
COLUMN_INCHES = 5.65
#: A figure drawn wider than this cannot be shown at its drawn size in one column: it spans both.
WIDE_INCHES = COLUMN_INCHES
_DEFAULT_DPI = 100.0  # matplotlib's default when a PNG carries no pHYs chunk


@dataclass(frozen=True)
class Claim:
    """One claim of the paper next to what this run measured."""

    claim: str
    paper: str
    measured: str
    passed: bool


@dataclass(frozen=True)
class Section:
    title: str
    claims: tuple[Claim, ...] = ()
    tables: tuple[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]], ...] = ()  # (caption, header, rows)
    figures: tuple[tuple[str, Path], ...] = ()  # (caption, png path)
    notes: tuple[str, ...] = ()
    error: str | None = None  # set when the section could not run; rendered as a failure
    extra: dict = field(default_factory=dict)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eee}.pass{color:#0a6b0a;font-weight:bold}.fail{color:#b00;font-weight:bold}
.figures{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));grid-auto-flow:dense;gap:1.5em 16px;align-items:start;margin:1em 0}
.figures figure{margin:0;min-width:0}.figures figure.wide{grid-column:1/-1}
.figures img{display:block;width:100%;height:auto}figcaption{font-size:90%;color:#555;margin-top:0.3em}
@media (max-width:800px){.figures{grid-template-columns:minmax(0,1fr)}}
.error{background:#fee;border:1px solid #b00;padding:0.5em}
"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def _table(caption: str, header: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_inches(data: bytes) -> tuple[float, float] | None:
    """(width, height) in inches a PNG was drawn at: pixels over its ``pHYs`` dpi (matplotlib
    writes it; 100 dpi without one). None if ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    w, h = struct.unpack(">II", data[16:24])
    dpi = _DEFAULT_DPI
    pos = 8
    while pos + 8 <= len(data):  # walk the chunks up to the image data (pHYs must precede IDAT)
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs" and n == 9 and pos + 17 <= len(data):
            ppx, _ppy, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            if unit == 1 and ppx > 0:  # pixels per metre
                dpi = ppx * 0.0254
            break
        if kind in (b"IDAT", b"IEND"):
            break
        pos += 12 + n
    return w / dpi, h / dpi


def is_wide(data: bytes) -> bool:
    """True for a figure drawn wider than :data:`WIDE_INCHES`: it spans both grid columns."""
    size = png_inches(data)
    return size is not None and size[0] > WIDE_INCHES


def _figure(cap: str, path: Path) -> str:
    raw = Path(path).read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    dims = ""
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:  # reserve the aspect ratio before decoding
        w, h = struct.unpack(">II", raw[16:24])
        dims = f" width='{w}' height='{h}'"
    cls = " class='wide'" if is_wide(raw) else ""
    return (f"<figure{cls}><img alt='{_esc(cap)}'{dims} src='data:image/png;base64,{data}'>"
            f"<figcaption>{_esc(cap)}</figcaption></figure>")


def render_html(title: str, sections: list[Section], meta: dict[str, str]) -> str:
    """Return the HTML text of the report."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{_esc(title)}</h1>")
    parts.append(_table("Run", ("key", "value"), tuple((k, v) for k, v in meta.items())))
    n_claims = sum(len(s.claims) for s in sections)
    n_pass = sum(c.passed for s in sections for c in s.claims)
    n_err = sum(s.error is not None for s in sections)
    parts.append(f"<p id='verdict'>{n_pass} of {n_claims} claims reproduced; {n_err} section(s) failed to run.</p>")
    for s in sections:
        parts.append(f"<h2>{_esc(s.title)}</h2>")
        if s.error:
            parts.append(f"<pre class='error'>{_esc(s.error)}</pre>")
        if s.claims:
            rows = "".join(
                f"<tr><td>{_esc(c.claim)}</td><td>{_esc(c.paper)}</td><td>{_esc(c.measured)}</td>"
                f"<td class='{'pass' if c.passed else 'fail'}'>{'PASS' if c.passed else 'FAIL'}</td></tr>"
                for c in s.claims
            )
            parts.append(
                "<table class='claims'><thead><tr><th>claim</th><th>paper</th><th>measured here</th><th>verdict</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        for cap, header, rows in s.tables:
            parts.append(_table(cap, header, rows))
        for note in s.notes:
            parts.append(f"<p>{_esc(note)}</p>")
        if s.figures:
            parts.append("<div class='figures'>" + "".join(_figure(cap, path) for cap, path in s.figures) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
